"""Find and run the benchmark scripts (``bench/bench_*.py`` of a source checkout) for the backends present.

What a script needs is read from its file without importing it: a module-level
``REQUIRES = ("cuda-device", "triton", ...)`` if it has one, otherwise its name's words
(``bench_triton_gpu.py`` needs the triton backend and a CUDA device). Needs:

- ``gpu`` / ``cuda-device``: a CUDA device visible to torch;
- ``triton`` / ``cuda``: that backend registered its ops (``obert_kernels info`` says why not);
- ``cpu``: nothing.

A script may also define ``QUICK_ARGS = [...]``: the arguments ``--quick`` passes for a
short run (without it ``--quick`` runs the script's defaults, and says so).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..ops import dispatch

__all__ = ["BenchScript", "find_bench_dir", "discover", "run_scripts"]

_NEED_WORDS = {"gpu": "cuda-device", "cuda": "cuda", "triton": "triton", "cpu": None}


@dataclass
class BenchScript:
    path: Path
    requires: tuple[str, ...]
    quick_args: list[str] | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def runnable(self) -> bool:
        return not self.missing


def find_bench_dir(start: Path | None = None) -> Path:
    """The ``bench/`` folder of the source checkout this package runs from, or $OBERT_BENCH_DIR."""
    env = os.environ.get("OBERT_BENCH_DIR")
    if env:
        return Path(env)
    candidate = (start or Path(__file__).resolve().parents[2]) / "bench"  # app/ -> obert_kernels/ -> checkout
    if not candidate.is_dir():
        raise FileNotFoundError(f"no bench/ folder at {candidate}: the benchmarks ship with the source checkout "
                                "(git clone), not the wheel; or set OBERT_BENCH_DIR")
    return candidate


def _module_constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


def missing_needs(requires) -> list[str]:
    """Why each of ``requires`` is not met here ([] = all met)."""
    out = []
    for need in requires:
        if need == "cuda-device":
            if not torch.cuda.is_available():
                out.append("needs a CUDA device (none visible to torch)")
        elif need in ("triton", "cuda"):
            why = dispatch.backend_missing_reason(need)
            if why:
                out.append(why)
        elif need not in ("cpu", None):
            out.append(f"unknown requirement {need!r}")
    return out


def _read_script(path: Path) -> BenchScript:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError) as exc:
        script = BenchScript(path, ())
        script.missing = [f"cannot parse: {exc}"]
        return script
    requires = _module_constant(tree, "REQUIRES")
    if requires is None:
        words = path.stem.split("_")[1:]
        requires = tuple(dict.fromkeys(_NEED_WORDS[w] for w in words if _NEED_WORDS.get(w)))
    quick = _module_constant(tree, "QUICK_ARGS")
    script = BenchScript(path, tuple(requires), [str(a) for a in quick] if quick is not None else None)
    script.missing = missing_needs(script.requires)
    return script


def discover(bench_dir: Path | None = None, names=None) -> list[BenchScript]:
    """bench_*.py scripts (all, or those named: 'bench_x', 'bench_x.py' or 'x'), with what they miss here."""
    bench_dir = bench_dir or find_bench_dir()
    scripts = [_read_script(p) for p in sorted(bench_dir.glob("bench_*.py"))]
    if not names:
        return scripts
    by_name = {}
    for s in scripts:
        for alias in (s.name, s.path.name, s.name.removeprefix("bench_")):
            by_name[alias] = s
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"no benchmark {', '.join(unknown)} in {bench_dir}; found: {', '.join(s.name for s in scripts)}")
    return [by_name[n] for n in names]


def run_scripts(scripts: list[BenchScript], *, quick: bool = False, extra_args=(), out=None) -> int:
    """Run each runnable script in turn (its output streams through); returns the number that failed."""
    out = sys.stdout if out is None else out
    summary, failed = [], 0
    for s in scripts:
        if not s.runnable:
            summary.append((s.name, "skipped", "; ".join(s.missing), 0.0))
            continue
        args = list(s.quick_args or []) if quick else []
        if quick and s.quick_args is None:
            print(f"== {s.name}: no QUICK_ARGS, running its defaults", file=out)
        args += list(extra_args)
        print(f"== {s.name} {' '.join(args)}", file=out, flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(s.path), *args])
        seconds = time.perf_counter() - start
        failed += rc != 0
        summary.append((s.name, "ok" if rc == 0 else f"failed (exit {rc})", "", seconds))
    print("\nbenchmarks:", file=out)
    for name, status, why, seconds in summary:
        tail = f" in {seconds:.1f} s" if status != "skipped" else f": {why}"
        print(f"  {name:<28} {status}{tail}", file=out)
    return failed
