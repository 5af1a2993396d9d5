"""One command on a GPU machine: validate every GPU path and measure the targets (issue 16).

    python bench/gpu_suite.py                      # everything, ≤ 8 minutes (--budget-s)
    python bench/gpu_suite.py --bundle "$OUT"      # also copy SUMMARY.md, suite.json and a .tar.gz there
    python bench/gpu_suite.py --dry-run            # the plumbing on a CPU: tiny sizes, Triton interpreter
    python bench/gpu_suite.py --build-ext-only     # on the CPU machine: build the CUDA extension for the
                                                   # GPU image (CPython 3.12, sm_90) into .gpu_ext/ to carry

Steps run in order of value, each in its own process group with its own time cap (the group
is killed at the cap and the step reported "timeout"); a step the remaining budget cannot
start is reported "skipped" with that reason. Nothing is dropped silently: every step ends in
the summary as passed / failed / timeout / skipped (with why).

  environment          device, driver, torch / Triton / CUDA / Python versions, date
  cuda_ext_carried     install the prebuilt extension from .gpu_ext/ and check that it imports
  cuda_ext_build       only if that failed: build it here (setup.py build_ext --inplace, all cores)
  info                 `python -m obert_kernels info`: which backends serve which op, and why not
  check                `python -m obert_kernels check` (every op × backend × storage vs float64);
                       if that command does not exist yet: pytest test_cuda.py test_triton.py
  tests:test_cuda.py   the CUDA extension's tests (never run on a GPU before)
  bench_cuda_woodbury  F⁻¹ build at d = 8.5e7, B = 50, m = 1024: naive, CUDA and Triton Woodbury
                       (dense and packed), direct; in one run
  bench_triton         Triton Woodbury / direct / naive per gradient, scoring and update vs one read of F⁻¹
  prune_e2e            one prune step at all-MiniLM-L6-v2 size, time per phase, F⁻¹ memory dense vs packed
  sequential_pass      a GPU benchmark of the sequential pass, if one exists (else skipped: bench_triton times it)
  tests:<file>         the other test files that run on a GPU, each with its own cap
  bench_ops            `pytest bench --benchmark-only` at the GPU sizes (bench-ops-gpu.json)

The targets of the issue are printed beside the measured numbers, judged only where measured at
the target's size. Results: bench/results/gpu-<device>-<date>/ (--out): suite.json, SUMMARY.md,
one log per step and each benchmark's own JSON + markdown. See bench/GPU.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
EXT_DIR = ROOT / ".gpu_ext"  # git-ignored: the prebuilt extension travels with the device tool's carry
SKIP_RC = 3  # an internal step exits with this to say "nothing to do here" (its last line says why)
REPORT_RESERVE_S = 5.0  # kept back from the budget for writing the reports
MIN_STEP_S = 5.0  # a step gets at least this much of the budget, or is skipped
TARGET_D, TARGET_B, TARGET_M = 85_000_000, 50, 1024
TARGETS = {"fisher_build_s": 0.5, "vs_naive": 30.0, "read_ratio": 2.0, "packed_fraction": 0.55}
# bench_cuda_gpu.py in the dry run: tiny, on the CPU. m > B and λ near the gradients' scale keep every
# block well conditioned: at λ = 1e-7 and B = 12, fp32 Woodbury errors there spread to 3-8× naive's.
# Without direct-triton (the interpreter takes 10 s per build there); the last --backends wins.
DRY_CUDA_BENCH = ["--device", "cpu", "--d", "600", "--block-size", "12", "--num-grads", "16", "--chunk", "16",
                  "--ref-blocks", "8", "--repeats", "1", "--damp", "1e-5",
                  "--backends", "naive,cuda-dense,cuda-packed,triton,triton-packed,direct"]
# Under python_tests/ (a folder runs all of it): the ones parametrized over CUDA devices or backends.
# "ops" replaced test_factors/test_scores_update/test_woodbury, moved there and renamed: on the
# first GPU run (H200, 2026-11-30) their steps failed "file not found" and the op tests never ran.
GPU_TEST_FILES = ("test_triton.py", "ops", "test_selection.py", "test_copy_rows.py", "test_packed.py", "test_dispatch.py",
                  "test_sequential.py", "test_pruner_backends.py", "test_integrations.py")


# ---- steps -----------------------------------------------------------------------------------
@dataclass
class Step:
    """One capped subprocess. ``when`` may skip it from earlier outcomes (returns a reason);
    ``fallback`` may name another command to run after it (returns (cmd, why) or None)."""

    name: str
    what: str
    cmd: list[str]
    cap_s: float
    expect: str = "passed"
    skip_rc: bool = False  # exit code SKIP_RC means skipped (internal steps only)
    when: Callable[[dict], str | None] | None = None
    fallback: Callable[[dict, str], tuple[list[str], str] | None] | None = None
    env: dict = field(default_factory=dict)


def py() -> list[str]:
    return [sys.executable]


def me(*args: str) -> list[str]:
    return py() + [str(Path(__file__).resolve()), *args]


def pytest_cmd(*files: str) -> list[str]:
    return py() + ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *(f"python_tests/{f}" for f in files)]


def outcome_of(record: dict, name: str) -> dict | None:
    return next((o for o in record["steps"] if o["name"] == name), None)


def build_only_if_carried_failed(record: dict) -> str | None:
    """cuda_ext_build runs only when the carried extension did not load (and never in a dry run)."""
    carried = outcome_of(record, "cuda_ext_carried")
    if carried and carried["status"] == "passed":
        return "the carried extension loaded (cuda_ext_carried)"
    if record["suite"]["dry_run"]:
        return "dry run: no nvcc build on the CPU (python bench/gpu_suite.py --build-ext-only builds it)"
    return None


def check_fallback(files: tuple[str, ...]) -> Callable[[dict, str], tuple[list[str], str] | None]:
    """`obert_kernels check` not there yet (argparse: exit 2, "invalid choice"): run these test files instead."""

    def fallback(outcome: dict, log_text: str):
        if outcome["rc"] == 2 and "invalid choice" in log_text:
            return (pytest_cmd(*files), "`python -m obert_kernels check` does not exist in this checkout: "
                                        f"ran pytest -x {' '.join(files)} instead")
        return None

    return fallback


def not_again(test_file: str) -> Callable[[dict], str | None]:
    """Skip a test file that check's fallback already ran through (GPU time is short); after a
    failure or a cut there (-x stops at the first failure) the file runs again on its own."""

    def when(record: dict) -> str | None:
        check = outcome_of(record, "check")
        if check and check["status"] == "passed" and test_file in (check.get("note") or ""):
            return "already passed in the check step's fallback (see its log)"
        return None

    return when


def sequential_step(dry: bool, out: Path, cap: float) -> Step:
    """A GPU benchmark of the sequential pass if one exists (bench/bench_*seq*_gpu.py), with its own
    quick arguments. bench_sequential_cpu.py is the CPU benchmark (minutes at MiniLM size): not
    run here; sequential_order's Triton time on the GPU is a row of the bench_triton step."""
    found = sorted(p for p in (ROOT / "bench").glob("bench_*_gpu.py") if re.search(r"seq", p.stem))
    what = "the sequential pass, if a GPU benchmark for it exists"
    if not found:
        return Step("sequential_pass", what, [], cap, when=lambda r: "no bench/bench_*seq*_gpu.py: sequential_order is "
                    "timed by the bench_triton step (its sequential_order row)")
    script = found[0]
    text = script.read_text()
    args = ["--dry-run"] if dry else list(_quick_args(text))
    if dry and "--dry-run" not in text:
        return Step("sequential_pass", what, [], cap, when=lambda r: f"{script.name} has no --dry-run")
    if '"--out"' in text:
        args += ["--out", str(out)]
    return Step("sequential_pass", f"{what}: {script.name}", py() + [str(script), *args], cap)


def _quick_args(text: str) -> list[str]:
    """A bench script's QUICK_ARGS (the `obert-kernels bench --quick` convention), read without importing it."""
    import ast

    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "QUICK_ARGS" for t in node.targets):
            try:
                return [str(a) for a in ast.literal_eval(node.value)]
            except ValueError:
                return []
    return []


def make_steps(args, out: Path) -> list[Step]:
    """The steps in order of value; caps (GPU, dry run) are seconds."""
    dry = args.dry_run
    cap = (lambda gpu, cpu: cpu) if dry else (lambda gpu, cpu: gpu)
    b = str(ROOT / "bench")
    steps = [Step("fake_slow", "a deliberately slow step: proves that a cap kills it and reports 'timeout'",
                  py() + ["-c", "import time; print('sleeping past the cap', flush=True); time.sleep(3600)"],
                  args.fake_slow_cap_s, expect="timeout")] if dry else []
    steps += [
        Step("environment", "device, driver, versions, date", me("--write-env", str(out / "environment.json")), cap(45, 60)),
        Step("cuda_ext_carried", "install the prebuilt CUDA extension (.gpu_ext/) and check it imports",
             me("--install-ext", *(["--dry-run"] if dry else [])), cap(45, 60), skip_rc=True),
        Step("cuda_ext_build", "build the CUDA extension here with all cores (only if the carried one failed)",
             me("--build-ext-inplace", "--cuda-archs", args.cuda_archs), cap(240, 60), when=build_only_if_carried_failed),
        Step("info", "which backend serves which op here, and why the others cannot",
             py() + ["-m", "obert_kernels", "info", "--d", str(TARGET_D)], cap(45, 60)),
        Step("check", "every op × backend × storage against the float64 references",
             py() + ["-m", "obert_kernels", "check"], cap(150, 120),
             # the dry run's interpreter needs minutes for test_triton.py: its fallback proves the switch only
             fallback=check_fallback(("test_cuda.py",) if dry else ("test_cuda.py", "test_triton.py"))),
        Step("tests:test_cuda.py", "pytest -x python_tests/test_cuda.py", pytest_cmd("test_cuda.py"), cap(90, 60),
             when=not_again("test_cuda.py")),
        Step("bench_cuda_woodbury", "F⁻¹ build at d=8.5e7, B=50, m=1024: naive vs Woodbury (CUDA, Triton; dense, packed) vs direct",
             py() + [f"{b}/bench_cuda_gpu.py", "--out", str(out), "--backends", args.fisher_methods]
             + (DRY_CUDA_BENCH if dry else []), cap(150, 90)),
        # the cheaper end-to-end step first: a cut bench_triton writes nothing, a cut prune_e2e would lose more
        Step("prune_e2e", "one prune step at MiniLM size (10.6M weights), each phase timed; F⁻¹ memory dense vs packed",
             py() + [f"{b}/bench_prune_gpu.py", "--out", str(out)] + (["--dry-run"] if dry else []), cap(120, 60)),
        Step("bench_triton", "Triton per gradient vs naive; scoring and update vs one read of F⁻¹",
             py() + [f"{b}/bench_triton_gpu.py", "--out", str(out), "--block-sizes", "50" if not dry else "12"]
             + (["--dry-run", "--d", "96", "--chunks", "4"] if dry else ["--d", str(TARGET_D), "--chunks", "32"]),
             cap(180, 90)),
        sequential_step(dry, out, cap(90, 60)),
    ]
    files = ("test_dispatch.py",) if dry else GPU_TEST_FILES  # the dry run proves the plumbing with one file
    steps += [Step(f"tests:{f}", f"pytest -x python_tests/{f}", pytest_cmd(f), cap(120, 60), when=not_again(f))
              for f in files]
    steps.append(bench_ops_step(dry, out, cap(150, 60)))
    return steps


def bench_ops_step(dry: bool, out: Path, cap: float) -> Step:
    """The pytest-benchmark op suite at its GPU sizes (d = 10^6, 10^7), JSON beside the logs."""
    cmd = py() + ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "bench" / "test_bench_ops.py"),
                  "--benchmark-only", "-k", "cuda-d", f"--benchmark-json={out / 'bench-ops-gpu.json'}"]
    skip = (lambda r: "the dry run has no GPU sizes") if dry else None
    return Step("bench_ops", "pytest bench --benchmark-only, GPU sizes: every op × backend, GFLOP/s and GB/s",
                cmd, cap, when=skip)


# ---- running ---------------------------------------------------------------------------------
def child_env(step: Step, dry: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if dry:
        env["TRITON_INTERPRET"] = "1"  # before obert_kernels is imported, in every child
    env.update(step.env)
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group, SIGKILL after 5 s (workers, nvcc and all)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_capped(cmd: list[str], cap_s: float, log: Path, env: dict) -> tuple[str, int | None, float]:
    """Run cmd in its own process group with output to log; (status, rc, seconds)."""
    start = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n# cap {cap_s:.0f} s\n".encode())
        f.flush()
        # its own process group, in this session: a caller that ends the session (the device tool
        # does when a command returns) still ends the step's processes
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)
        try:
            rc = proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            f.write(f"\n# killed at the {cap_s:.0f} s cap\n".encode())
            return "timeout", None, time.monotonic() - start
        except BaseException:  # the suite itself interrupted (SIGTERM, Ctrl-C): take the step down with it
            kill_group(proc)
            raise
    kill_group(proc)  # whatever the step left running in its group (workers, a daemon) ends with it
    return ("passed" if rc == 0 else "failed"), rc, time.monotonic() - start


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return lines[-1][:300] if lines else ""


def run_step(step: Step, left_s: float, index: int, args, out: Path, record: dict) -> dict:
    """Run (or skip, with the reason) one step within what is left of the budget."""
    o = {"name": step.name, "what": step.what, "cap_s": step.cap_s, "expect": step.expect, "cmd": step.cmd,
         "status": "skipped", "reason": None, "note": None, "seconds": 0.0, "rc": None, "log": None}
    reason = (f"not selected (--only {args.only})" if args.only and step.name not in args.only.split(",")
              else step.when(record) if step.when else None)
    if reason is None and left_s < MIN_STEP_S:
        reason = f"budget exhausted: {max(left_s, 0):.0f} s left of --budget-s {args.budget_s:.0f}"
    if reason:
        o["reason"] = reason
        return o
    cap = min(step.cap_s, left_s)
    log = out / f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', step.name)}.log"
    o["log"], o["cap_used_s"] = log.name, cap
    print(f"[{step.name}] {step.what} (cap {cap:.0f} s)", flush=True)
    o["status"], o["rc"], o["seconds"] = run_capped(step.cmd, cap, log, child_env(step, args.dry_run))
    text = log.read_text(errors="replace")
    if step.skip_rc and o["rc"] == SKIP_RC:
        o["status"], o["reason"] = "skipped", last_line(text)
    elif step.fallback and o["status"] == "failed" and (fb := step.fallback(o, text)):
        o["cmd"], o["note"] = fb
        cap = max(min(step.cap_s, left_s - o["seconds"]), 1.0)  # the fallback gets the step's cap again, within the budget
        o["status"], o["rc"], secs = run_capped(fb[0], cap, log, child_env(step, args.dry_run))
        o["seconds"] += secs
    if o["status"] == "timeout":
        o["reason"] = f"cut at its {cap:.0f} s cap" + (" (lowered by the budget)" if cap < step.cap_s else "")
    elif o["status"] == "failed" and not o["reason"]:
        o["reason"] = f"exit {o['rc']}: {last_line(text)}"
    o["tail"] = text[-3000:]
    print(f"[{step.name}] {o['status']} in {o['seconds']:.1f} s" + (f": {o['reason']}" if o["reason"] else ""), flush=True)
    return o


# ---- environment (run as its own step: a hung driver call is then capped too) -----------------
def quiet(cmd: list[str], timeout: float = 30) -> str | None:
    """stdout of cmd, or None if it is missing, fails or hangs."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def nvidia_smi() -> list[dict]:
    """name, driver, memory, compute capability of each GPU (empty without nvidia-smi)."""
    keys = ["name", "driver_version", "memory.total", "compute_cap"]
    text = quiet(["nvidia-smi", f"--query-gpu={','.join(keys)}", "--format=csv,noheader"])
    return [dict(zip(keys, (x.strip() for x in line.split(",")))) for line in (text or "").splitlines() if line.strip()]


def commit_line(env: dict) -> str:
    """--commit wins: the device tool's copy of the tree carried a .git from the session's start
    (H200 runs of 2026-11-30 said "4e82b69 (uncommitted changes)" for commits made later)."""
    given, seen = env.get("commit_given"), env.get("commit")
    if given:
        return given + (f" (given; the .git there says {seen})" if seen and not given.startswith(seen) else " (given)")
    return (seen or "unknown (no .git; pass --commit)") + (" (uncommitted changes)" if env.get("dirty") else "")


def collect_env() -> dict:
    """Everything the results depend on: device, driver, versions, commit, date."""
    import platform

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
           "cpus": os.cpu_count(), "gpus": nvidia_smi(), "commit": quiet(["git", "rev-parse", "--short", "HEAD"]),
           "dirty": bool(quiet(["git", "status", "--porcelain", "--untracked-files=no"])),
           "commit_given": os.environ.get("OBK_SUITE_COMMIT"),  # --commit: where .git did not travel
           "nvcc": (quiet(["nvcc", "--version"]) or "not found").splitlines()[-1]}
    import torch

    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    else:
        env["device"] = f"CPU {platform.machine()} (no CUDA device)"
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = f"not importable: {exc}"
    env["driver"] = env["gpus"][0]["driver_version"] if env["gpus"] else None
    return env


def device_slug() -> str:
    """Short name of the first GPU for the results folder, from nvidia-smi (no torch import)."""
    gpus = nvidia_smi()
    name = gpus[0]["name"] if gpus else "unknown"
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-") or "unknown"


# ---- the CUDA extension -------------------------------------------------------------------------
CUDA_SOURCE_SUFFIXES = (".cu", ".cuh", ".cpp", ".h", ".py")  # csrc/README.md changes nothing built


def sources_digest() -> str:
    """sha256 of what the CUDA extension is built from (csrc/ but its cpu/ folder, and setup.py): a
    carried .so built from other sources is stale. csrc/cpu/ is the CPU extension's, which the GPU
    build skips (OBERT_KERNELS_BUILD_CPU=0): a change there once marked a current .so stale."""
    import hashlib

    h = hashlib.sha256()
    cpu_only = ROOT / "csrc" / "cpu"
    for p in sorted((ROOT / "csrc").rglob("*")) + [ROOT / "setup.py"]:
        if p.is_file() and cpu_only not in p.parents and p.suffix in CUDA_SOURCE_SUFFIXES:
            h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def python_info(python: str) -> dict:
    """version and EXT_SUFFIX of another interpreter, and whether it has pybind11."""
    code = ("import json, platform, sysconfig, importlib.util as u; print(json.dumps({'version': platform.python_version(), "
            "'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX'), 'pybind11': u.find_spec('pybind11') is not None}))")
    text = quiet([python, "-c", code])
    if text is None:
        raise SystemExit(f"cannot run {python}")
    return json.loads(text)


def build_ext(python: str, archs: str, dest: Path | None) -> int:
    """setup.py build_ext with nvcc on all cores: into dest (a build-lib), or in place when None."""
    # The CPU extension (_cpu, issue 15) stays out: the manifest carries one module, the GPU steps
    # never call it, and since setup.py builds it by default it had made --build-ext-only fail.
    env = dict(os.environ, OBERT_KERNELS_BUILD_CUDA="1", OBERT_KERNELS_CUDA_ARCHS=archs,
               OBERT_KERNELS_NVCC_THREADS=str(os.cpu_count() or 1), OBERT_KERNELS_BUILD_CPU="0")
    if not (env.get("CUDA_HOME") or shutil.which("nvcc")) and Path("/usr/local/cuda/bin/nvcc").exists():
        env["CUDA_HOME"] = "/usr/local/cuda"  # the toolkit's usual home, when an image leaves it off PATH
    temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"obk-ext-build-{os.getpid()}"
    where = ["--inplace"] if dest is None else ["--build-lib", str(dest)]
    cmd = [python, "setup.py", "-q", "build_ext", *where, "--build-temp", str(temp)]
    print("$", " ".join(cmd), f"(OBERT_KERNELS_CUDA_ARCHS={archs})", flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    shutil.rmtree(temp, ignore_errors=True)
    return rc


def module_of(rel: str, suffix: str) -> str:
    """'obert_kernels/_C.cpython-312-x86_64-linux-gnu.so' -> 'obert_kernels._C'."""
    return rel[: -len(suffix)].replace("/", ".")


def import_check(module: str) -> int:
    """Import the extension in a fresh interpreter; on a machine with a GPU it must also see it."""
    code = (f"import importlib, torch; m = importlib.import_module({module!r}); print('imported', m.__file__); "
            "n, err = m.device_count() if hasattr(m, 'device_count') else (None, ''); "
            "print('extension: devices', n, err, 'built for', getattr(m, 'compiled_archs', '?')); "
            "bad = torch.cuda.is_available() and n == 0; print('the extension sees no device' if bad else 'ok'); "
            "raise SystemExit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.call([sys.executable, "-c", code], cwd=ROOT, env=env)


def build_ext_only(args) -> int:
    """On the CPU machine: build for the GPU image's Python into .gpu_ext/ with a manifest."""
    python = args.python or find_python312()
    info = python_info(python)
    if not info["pybind11"]:
        raise SystemExit(f"{python} has no pybind11: {python} -m pip install pybind11")
    lib = EXT_DIR / "lib"
    shutil.rmtree(lib, ignore_errors=True)
    start = time.monotonic()
    if build_ext(python, args.cuda_archs, lib):
        return 1
    found = sorted(lib.rglob("*" + info["ext_suffix"]))
    if len(found) != 1:
        raise SystemExit(f"expected one {info['ext_suffix']} under {lib}, found {[str(p) for p in found]}")
    rel = found[0].relative_to(lib).as_posix()
    manifest = {"path": rel, "module": module_of(rel, info["ext_suffix"]), "ext_suffix": info["ext_suffix"],
                "python": info["version"], "archs": args.cuda_archs, "sources_sha256": sources_digest(),
                "commit": quiet(["git", "rev-parse", "--short", "HEAD"]), "nvcc": (quiet(["nvcc", "--version"]) or "").splitlines()[-1:],
                "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "build_s": round(time.monotonic() - start, 1), "bytes": found[0].stat().st_size}
    (EXT_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"built {lib / rel} for Python {info['version']}, sm_{args.cuda_archs} in {manifest['build_s']} s;\n"
          f"carry it with the device tool: carry=[\".gpu_ext\"], then `python bench/gpu_suite.py` installs it")
    return 0


def find_python312() -> str:
    """A CPython 3.12 that runs here (the GPU image's minor version): python3.12 on PATH, else
    pyenv's (its shim on PATH fails when 3.12 is not the selected version)."""
    candidates = [shutil.which("python3.12")] + sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python"))
    for c in filter(None, candidates):
        if (quiet([c, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"]) or "") == "True":
            return c
    raise SystemExit("no python3.12 found that runs: pass --python /path/to/python3.12")


def install_ext(dry: bool) -> int:
    """Copy the carried .so into the package if it fits this Python and these sources; import it.
    A dry run only reads the manifest and says whether the .so would be current (it is built for
    the GPU image's Python, so it need not load here)."""
    import sysconfig

    path = EXT_DIR / "manifest.json"
    if not path.exists():
        print(f"no prebuilt extension: {path.relative_to(ROOT)} is missing (build it on the CPU machine with "
              "`python bench/gpu_suite.py --build-ext-only`, then carry .gpu_ext)")
        return SKIP_RC
    m = json.loads(path.read_text())
    print("carried:", json.dumps(m))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    if dry:
        stale = "current" if m["sources_sha256"] == sources_digest() else "STALE (csrc/ or setup.py changed since)"
        print(f"dry run: not installed; the carried extension is for Python {m['python']} ({m['ext_suffix']}), "
              f"sm_{m['archs']}, built at {m['commit']}, sources {stale}")
        return SKIP_RC
    if m["ext_suffix"] != suffix:
        print(f"the carried extension is for Python {m['python']} ({m['ext_suffix']}); this Python "
              f"{sys.version.split()[0]} needs {suffix}")
        return 1
    if m["sources_sha256"] != sources_digest():
        print(f"stale: csrc/ or setup.py changed since the carried extension was built (at commit {m['commit']})")
        return 1
    dst = ROOT / m["path"]
    shutil.copy2(EXT_DIR / "lib" / m["path"], dst)
    print(f"installed {m['path']}")
    rc = import_check(m["module"])
    if rc:
        dst.unlink()  # leave no broken module behind for the build step
    return rc


def build_ext_inplace(args) -> int:
    """On the GPU machine: build in place with this Python and all cores, then import it."""
    import sysconfig

    if build_ext(sys.executable, args.cuda_archs, None):
        return 1
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    found = sorted((ROOT / "obert_kernels").rglob("*" + suffix), key=lambda p: p.stat().st_mtime)
    if not found:
        print(f"no {suffix} under obert_kernels/ after the build")
        return 1
    return import_check(module_of(found[-1].relative_to(ROOT).as_posix(), suffix))


# ---- targets: from the benchmarks' own JSON, judged only where measured at the target's size --------
def newest(out: Path, pattern: str) -> dict | None:
    files = sorted(out.glob(pattern), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()) if files else None


def target_row(target: str, measured: str, ok: bool | None, at_size: bool, source: str) -> dict:
    """ok None: nothing measured. Judged pass/FAIL only at the target's size."""
    verdict = ("not measured" if ok is None else ("pass" if ok else "FAIL") if at_size
               else "not judged (not the target's size)")
    return {"target": target, "measured": measured, "verdict": verdict, "source": source}


def fisher_targets(out: Path, record: dict) -> list[dict]:
    """Fisher build < 0.5 s and ≥ 30× naive, per method, from bench_cuda_gpu.py's JSON."""
    res = newest(out, "*-cuda-woodbury-*.json")
    t_s, t_x = TARGETS["fisher_build_s"], TARGETS["vs_naive"]
    if res is None:
        why = status_line(record, "bench_cuda_woodbury")
        return [target_row(f"F⁻¹ build < {t_s} s at d=8.5e7, B=50, m=1024", why, None, False, "bench_cuda_woodbury"),
                target_row(f"≥ {t_x:.0f}× the naive update, same run", why, None, False, "bench_cuda_woodbury")]
    c = res["config"]
    at = (c["d"], c["block_size"], c["num_grads"]) == (TARGET_D, TARGET_B, TARGET_M)
    size = f"d={c['d']:.3g}, B={c['block_size']}, m={c['num_grads']}"
    rows = []
    for name, r in res["methods"].items():
        if name == "naive":
            continue
        if "seconds" not in r:
            rows.append(target_row(f"F⁻¹ build < {t_s} s ({name})", f"skipped: {r.get('skipped')}", None, at, size))
            continue
        accurate = r.get("within_spec_tolerance", True)
        note = "" if accurate else f" (error {r['rel_err_vs_float64']:.1e} beyond SPEC §4's tolerance)"
        rows.append(target_row(f"F⁻¹ build < {t_s} s ({name})", f"{r['seconds']:.3f} s{note}",
                               r["seconds"] < t_s and accurate, at, size))
        if r.get("speedup_vs_naive") is not None:
            rows.append(target_row(f"≥ {t_x:.0f}× naive ({name})", f"{r['speedup_vs_naive']:.1f}×",
                                   r["speedup_vs_naive"] >= t_x and accurate, at, size))
    return rows


def triton_targets(out: Path, record: dict) -> list[dict]:
    """Per gradient vs naive (Triton, direct) and scoring/update vs one read of F⁻¹, from bench_triton_gpu.py."""
    res = newest(out, "triton-*.json")
    if res is None:
        return [target_row(f"scoring and update ≤ {TARGETS['read_ratio']:.0f}× one read of F⁻¹",
                           status_line(record, "bench_triton"), None, False, "bench_triton")]
    rows = []
    top = max((r["d"] for r in res["fisher"]), default=None)  # --quick also runs d = 1e6: only the largest is a target
    for r in res["fisher"]:
        if r["d"] == top and r["method"] in ("triton", "direct") and r.get("vs_naive") is not None:
            at = (r["d"], r["B"]) == (TARGET_D, TARGET_B)
            rows.append(target_row(f"≥ {TARGETS['vs_naive']:.0f}× naive per gradient ({r['method']}, Triton, k={r['k']})",
                                   f"{r['vs_naive']:.1f}×", r["vs_naive"] >= TARGETS["vs_naive"], at, f"d={r['d']:.3g}, B={r['B']}"))
    top = max((r["d"] for r in res["scores_update"]), default=None)
    for r in res["scores_update"]:
        if r["d"] == top and r.get("vs_read_finv") is not None:
            what = f"{r['op']} {r['pattern']}{' ' + r['update'] if r.get('update') else ''}"
            rows.append(target_row(f"{what} ≤ {TARGETS['read_ratio']:.0f}× one read of F⁻¹ (Triton)",
                                   f"{r['vs_read_finv']:.2f}×" + ("" if r["passed"] else " (check FAILED)"),
                                   r["vs_read_finv"] <= TARGETS["read_ratio"] and r["passed"],
                                   (r["d"], r["B"]) == (TARGET_D, TARGET_B), f"d={r['d']:.3g}, B={r['B']}"))
    return rows


def memory_targets(out: Path, record: dict) -> list[dict]:
    """Packed F⁻¹ ≤ 55% of dense, as allocated on the device (bench_prune_gpu.py)."""
    res = newest(out, "prune-*.json")
    mem = (res or {}).get("finv_memory")
    target = f"packed F⁻¹ ≤ {TARGETS['packed_fraction']:.0%} of dense in device memory"
    if not mem:
        why = status_line(record, "prune_e2e") if res is None else "not measured (no CUDA device, or --finv-memory-d 0)"
        return [target_row(target, why, None, False, "prune_e2e")]
    return [target_row(target, f"{mem['packed_over_dense']:.1%} ({mem['packed_bytes'] / 2**30:.2f} of "
                               f"{mem['dense_bytes'] / 2**30:.2f} GiB)", mem["packed_over_dense"] <= TARGETS["packed_fraction"],
                       (mem["d"], mem["B"]) == (TARGET_D, TARGET_B), f"d={mem['d']:.3g}, B={mem['B']}")]


def status_line(record: dict, step: str) -> str:
    o = outcome_of(record, step)
    if o is None:
        return "not measured: step not reached yet"
    return f"not measured: {step} {o['status']}" + (f" ({o['reason']})" if o.get("reason") else "")


# ---- reports -------------------------------------------------------------------------------------
def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def prune_table(out: Path) -> list[str]:
    """The phases of the end-to-end prune step, from bench_prune_gpu.py's markdown table."""
    files = sorted(out.glob("prune-*.md"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    lines = files[-1].read_text().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    return ["", "## End-to-end prune step (seconds per phase)", "", lines[2] if len(lines) > 2 else "", ""] + table


def markdown(record: dict) -> str:
    env, s = record["environment"], record["suite"]
    gpu = (env.get("gpus") or [{}])[0]
    lines = [f"# GPU suite{' (DRY RUN on a CPU)' if s['dry_run'] else ''}: {env.get('device', '?')} ({s['started']})", "",
             f"driver {gpu.get('driver_version', env.get('driver'))}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"triton {env.get('triton')}, Python {env.get('python')}, {env.get('nvcc')}, {env.get('cpus')} CPUs; "
             f"commit {commit_line(env)}", "",
             f"Command: `{s['command']}`; budget {s['budget_s']:.0f} s, used {s.get('elapsed_s', 0):.0f} s."
             + (f" **{s['interrupted']}**." if s.get("interrupted") else ""), "",
             "## Targets (issue 16)", "", "| target | measured | verdict | at |", "|---|---|---|---|"]
    lines += [f"| {cell(t['target'])} | {cell(t['measured'])} | {t['verdict']} | {cell(t['source'])} |" for t in record["targets"]]
    lines += prune_table(Path(s["out"]))
    lines += ["", "## Summary", "", "| # | step | status | seconds | cap s | why / note | log |", "|---:|---|---|---:|---:|---|---|"]
    for i, o in enumerate(record["steps"], 1):
        status = o["status"] + (" (expected)" if o["status"] == o["expect"] != "passed" else "")
        why = "; ".join(x for x in (o.get("note"), o.get("reason")) if x)
        lines.append(f"| {i} | {o['name']} | **{status}** | {o['seconds']:.1f} | {o.get('cap_used_s', o['cap_s']):.0f} | "
                     f"{cell(why)} | {o['log'] or ''} |")
    return "\n".join(lines) + "\n"


def write_reports(record: dict, out: Path, bundle: Path | None) -> str:
    """suite.json + SUMMARY.md in the results folder (and a .tar.gz of it with copies in --bundle)."""
    record["targets"] = fisher_targets(out, record) + triton_targets(out, record) + memory_targets(out, record)
    text = markdown(record)
    (out / "suite.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "SUMMARY.md").write_text(text)
    if bundle:
        bundle.mkdir(parents=True, exist_ok=True)
        with tarfile.open(bundle / f"{out.name}.tar.gz", "w:gz") as tar:
            tar.add(out, arcname=out.name)
        for name in ("suite.json", "SUMMARY.md"):
            shutil.copy2(out / name, bundle / name)
    return text


def results_dir(args) -> Path:
    if args.out:
        return args.out
    today = datetime.date.today().isoformat()
    base = ROOT / "bench" / "results" / (f"dryrun-cpu-{today}" if args.dry_run else f"gpu-{device_slug()}-{today}")
    return base if not base.exists() else base.with_name(base.name + datetime.datetime.now().strftime("-%H%M%S"))


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole run, seconds (default 480 = 8 min)")
    ap.add_argument("--out", type=Path, help="results folder (default bench/results/gpu-<device>-<date>/)")
    ap.add_argument("--bundle", type=Path, help="also write <out>.tar.gz, SUMMARY.md and suite.json here (e.g. $OUT)")
    ap.add_argument("--only", help="run only these steps (comma-separated names); the others are reported skipped")
    ap.add_argument("--dry-run", action="store_true", help="the plumbing on a CPU: tiny sizes, TRITON_INTERPRET=1, a fake slow step")
    ap.add_argument("--fake-slow-cap-s", type=float, default=2.0, help="--dry-run: the fake slow step's cap")
    ap.add_argument("--fisher-methods", default="naive,cuda-dense,cuda-packed,triton,triton-packed,direct,direct-triton",
                    help="bench_cuda_gpu.py --backends for the F⁻¹ build step")
    ap.add_argument("--commit", help="the commit being run, for the record (the device machine's copy has no .git)")
    ap.add_argument("--cuda-archs", default="90", help="compute capabilities to build the extension for (H100/H200: 90)")
    ap.add_argument("--build-ext-only", action="store_true", help="build the extension into .gpu_ext/ for --python, then stop")
    ap.add_argument("--python", help="--build-ext-only: the interpreter to build for (default: a python3.12 found here)")
    ap.add_argument("--write-env", type=Path, help=argparse.SUPPRESS)  # internal steps
    ap.add_argument("--install-ext", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build-ext-inplace", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def internal(args) -> int | None:
    """The modes the suite runs as its own steps (and --build-ext-only); None for a suite run."""
    if args.write_env:
        env = collect_env()
        args.write_env.write_text(json.dumps(env, indent=1))
        print(json.dumps(env, indent=1))
        return 0
    if args.install_ext:
        return install_ext(args.dry_run)
    if args.build_ext_inplace:
        return build_ext_inplace(args)
    if args.build_ext_only:
        return build_ext_only(args)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    rc = internal(args)
    if rc is not None:
        return rc
    out = results_dir(args).resolve()  # the steps run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    if args.commit:
        os.environ["OBK_SUITE_COMMIT"] = args.commit  # the environment step records it
    record = {"suite": {"command": " ".join(["python", "bench/gpu_suite.py", *(sys.argv[1:] if argv is None else argv)]),
                        "dry_run": args.dry_run, "budget_s": args.budget_s, "out": str(out),
                        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
              "environment": {}, "steps": [], "targets": []}
    print(f"results: {out}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as SystemExit: the running step is killed first
    start = time.monotonic()
    steps = make_steps(args, out)
    try:
        for i, step in enumerate(steps, 1):
            left = args.budget_s - (time.monotonic() - start) - REPORT_RESERVE_S
            record["steps"].append(run_step(step, left, i, args, out, record))
            if step.name == "environment" and (out / "environment.json").exists():
                record["environment"] = json.loads((out / "environment.json").read_text())
            record["suite"]["elapsed_s"] = time.monotonic() - start
            text = write_reports(record, out, args.bundle)  # after every step: a killed run keeps what it had
    except (KeyboardInterrupt, SystemExit):
        done = len(record["steps"])
        record["suite"]["interrupted"] = f"interrupted after {time.monotonic() - start:.0f} s, during step {done + 1}"
        record["steps"] += [{"name": st.name, "what": st.what, "cap_s": st.cap_s, "expect": st.expect, "cmd": st.cmd,
                             "status": "skipped", "note": None, "seconds": 0.0, "rc": None, "log": None,
                             "reason": "the suite was interrupted " + ("while it ran" if st is steps[done] else "before it")}
                            for st in steps[done:]]
        write_reports(record, out, args.bundle)
        raise
    print("\n" + text, flush=True)
    bad = [o["name"] for o in record["steps"] if o["status"] not in ("skipped", o["expect"])]
    print(f"results: {out}" + (f"; not as expected: {', '.join(bad)}" if bad else "; every step ran as expected or was skipped"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
