"""``python -m obert_kernels check``: every op on every backend and device here, against the float64 oracles.

What to run first on a new machine (``python -m bitsandbytes`` is the model): each case of
``check_cases`` (the Fisher inverse by Woodbury and by the direct path, scores for each
pattern with and without factors, the update obs/joint/none, obs_apply) runs through the
public ``obert_kernels.ops`` functions with an explicit ``backend=`` on each device present
and on dense and packed F⁻¹ storage, and is compared with its float64 reference. One line
per op × device × storage × backend: ``ok  max rel err …``, ``not supported`` (the
backend's own reasons, ``ops.not_supported_reasons``, listed once each under the table), or
``MISMATCH`` / ``ERROR``. Exit status 1 on any mismatch or error, else 0: a backend that
cannot run here is not a failure. ``--json PATH`` writes the same rows for scripts
(bench/gpu_suite.py runs this as a subprocess).

On a machine without a GPU the Triton kernels run only through Triton's interpreter, which
is decided when obert_kernels is first imported (TRITON_INTERPRET=1): ``--interpret`` runs
the check again in a child process with it set.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import ops
from ..ops.reference import FISHER_ERROR_FLOOR
from .check_cases import RTOL, UPDATE_SLACK, Case, Target, all_cases
from .info import devices, versions
from .options import CheckOptions

__all__ = ["CheckRow", "run_checks", "format_table", "run_check_command", "STORAGES"]

STORAGES = ("dense", "packed")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class CheckRow:
    """One op × device × storage × backend. status: "ok" | "not supported" | "MISMATCH" | "ERROR"."""

    op: str
    variant: str
    shape: str
    device: str
    storage: str
    backend: str
    status: str
    max_rel_err: float | None = None
    tolerance: float | None = None
    reasons: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("MISMATCH", "ERROR")


def _run_one(case: Case, inputs: dict, target: Target) -> CheckRow:
    row = CheckRow(case.op, case.variant, case.shape, target.device, target.storage, target.backend, "ok")
    try:
        result = case.run(inputs, target)
    except ops.BackendNotSupported as exc:
        row.status, row.reasons = "not supported", list(exc.reasons)
        return row
    except Exception as exc:  # a kernel that raises on a call its backend accepted is a failure
        row.status, row.detail = "ERROR", f"{type(exc).__name__}: {exc}"
        return row
    row.max_rel_err, row.tolerance = result.error, result.tolerance
    if not result.ok:
        row.status = "MISMATCH"
        row.detail = "; ".join(result.problems + ([] if result.error <= result.tolerance else
                                                   [f"max rel err {result.error:.1e} > tolerance {result.tolerance:.1e}"]))
    return row


def run_checks(options: CheckOptions) -> list[CheckRow]:
    """Every case on every (device, storage, backend) the options select; inputs made once per case."""
    dtype = DTYPES[options.dtype]
    rows = []
    for index, case in enumerate(all_cases(options.quick)):
        inputs = case.make(torch.Generator().manual_seed(options.seed * 1000 + index))
        for device in options.devices or devices():
            for storage in STORAGES:
                for backend in options.backends or ops.BACKENDS:
                    rows.append(_run_one(case, inputs, Target(backend, device, storage, dtype)))
    return rows


def _footnotes(rows: list[CheckRow]) -> dict[str, int]:
    """Each distinct reason (or error) text -> its note number, in order of appearance."""
    notes: dict[str, int] = {}
    for row in rows:
        for text in _row_notes(row):
            notes.setdefault(text, len(notes) + 1)
    return notes


def _row_notes(row: CheckRow) -> list[str]:
    if row.status == "not supported":
        return [f"{row.backend}: {'; '.join(row.reasons)}"]
    return [f"{row.backend}: {row.detail}"] if row.status == "ERROR" else []


def _cell(row: CheckRow, notes: dict[str, int]) -> str:
    if row.status == "ok":
        return f"ok  max rel err {row.max_rel_err:.1e}  (tol {row.tolerance:.1e})"
    if row.status == "MISMATCH":
        return f"MISMATCH  {row.detail}"
    refs = ", ".join(f"[{notes[t]}]" for t in _row_notes(row))
    return f"{row.status}: see {refs}"


def format_table(rows: list[CheckRow], options: CheckOptions, seconds: float) -> str:
    """The text ``check`` prints: a header, one line per row, the notes, a summary line."""
    notes = _footnotes(rows)
    dtype = DTYPES[options.dtype]
    lines = [f"obert_kernels check: each op against its float64 reference ({options.dtype}, seed {options.seed})",
             f"max rel err = largest ‖out − ref‖/‖ref‖ over the op's outputs; tolerance: scores {RTOL[dtype]:.0e}, "
             f"updates {RTOL[dtype] * UPDATE_SLACK[dtype]:.0e}, F⁻¹ SPEC §4 (twice the per-gradient fp32 error "
             f"+ {FISHER_ERROR_FLOOR:.0e})", ""]
    op_width = max(len(f"{r.op} {r.variant}") for r in rows) if rows else 10
    shape_width = max(len(r.shape) for r in rows) if rows else 10
    for r in rows:
        name = f"{r.op} {r.variant}".strip()
        lines.append(f"{r.device:<7} {name:<{op_width}}  {r.shape:<{shape_width}}  {r.storage:<6}  {r.backend:<6}  {_cell(r, notes)}")
    if notes:
        lines += ["", "notes:"] + [f"  [{n}] {text}" for text, n in notes.items()]
    lines += ["", _summary(rows, seconds)]
    return "\n".join(lines)


def _summary(rows: list[CheckRow], seconds: float) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "not supported", "MISMATCH", "ERROR")}
    by_backend = "; ".join(f"{b}: {sum(r.backend == b and r.status == 'ok' for r in rows)}/"
                           f"{sum(r.backend == b for r in rows)} ok" for b in dict.fromkeys(r.backend for r in rows))
    verdict = "FAILED" if counts["MISMATCH"] or counts["ERROR"] else "passed"
    return (f"{verdict}: {counts['ok']} ok, {counts['not supported']} not supported, {counts['MISMATCH']} mismatches, "
            f"{counts['ERROR']} errors ({by_backend}) in {seconds:.1f} s")


def _interpret_hint(rows: list[CheckRow]) -> str | None:
    if torch.cuda.is_available():  # Triton runs compiled on the GPU rows; the interpreter is for GPU-less machines
        return None
    if any(r.backend == "triton" and any("TRITON_INTERPRET" in x for x in r.reasons) for r in rows):
        return "to run the Triton kernels on this CPU through Triton's interpreter (slow): check --interpret"
    return None


def write_json(path: Path, rows: list[CheckRow], options: CheckOptions, seconds: float, exit_code: int) -> None:
    """The rows as JSON, with what produced them: {"options", "versions", "devices", "rows", "exit_code"}."""
    report = {"command": "check", "options": options.report_dict(), "versions": versions(),
              "triton_interpret": os.environ.get("TRITON_INTERPRET"), "devices": list(options.devices or devices()),
              "seconds": round(seconds, 3), "rows": [_json_row(r) for r in rows], "exit_code": exit_code}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def _json_row(row: CheckRow) -> dict:
    """asdict, with a non-finite error as null (strict JSON has no Infinity; the detail says what went wrong)."""
    out = asdict(row)
    if out["max_rel_err"] is not None and not math.isfinite(out["max_rel_err"]):
        out["max_rel_err"] = None
    return out


def _rerun_interpreted(options: CheckOptions) -> int:
    """Run ``check`` in a child Python with TRITON_INTERPRET=1, which must be set before obert_kernels
    (and Triton's decorators) are imported; returns its exit status."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    print("re-running with TRITON_INTERPRET=1 (the Triton kernels through Triton's CPU interpreter)", flush=True)
    cmd = [sys.executable, "-m", "obert_kernels", "check", *options.to_argv(interpret=False)]
    return subprocess.run(cmd, env=env).returncode


def run_check_command(options: CheckOptions) -> int:
    """Run the check, print the table (and write --json); 1 on any mismatch or error, else 0."""
    if options.interpret and os.environ.get("TRITON_INTERPRET") != "1":
        return _rerun_interpreted(options)
    start = time.perf_counter()
    rows = run_checks(options)
    seconds = time.perf_counter() - start
    exit_code = 1 if any(r.failed for r in rows) else 0
    print(format_table(rows, options, seconds))
    hint = _interpret_hint(rows)
    if hint:
        print(hint)
    if options.json_path is not None:
        write_json(options.json_path, rows, options, seconds, exit_code)
        print(f"wrote {options.json_path}")
    return exit_code
