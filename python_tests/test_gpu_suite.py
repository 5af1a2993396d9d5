"""bench/gpu_suite.py on the CPU: the dry run's plumbing (caps, skips with reasons, reports) and
its target judgements, so the one GPU command works the first time a GPU is there."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.py"
# the dry run's steps this test runs: the rest are reported "skipped: not selected" (their
# scripts have their own CPU tests; the full dry run takes ~2 minutes, see bench/GPU.md)
RUN = "fake_slow,environment,cuda_ext_carried,cuda_ext_build,bench_cuda_woodbury,prune_e2e,sequential_pass"


def load():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_every_gpu_test_path_exists():
    missing = [f for f in load().GPU_TEST_FILES if not (ROOT / "python_tests" / f).exists()]
    assert not missing, f"GPU_TEST_FILES names paths python_tests/ no longer has: {missing}"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--only", RUN,
                           "--budget-s", "240"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    print(f"dry run: {time.monotonic() - start:.0f} s")
    return proc, out


def test_dry_run_reports_every_step(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record = json.loads((out / "suite.json").read_text())
    summary = (out / "SUMMARY.md").read_text()
    names = [s.name for s in load().make_steps(load().parse_args(["--dry-run"]), out)]
    assert [o["name"] for o in record["steps"]] == names  # every step, in order: none dropped
    for o in record["steps"]:
        assert o["status"] in ("passed", "failed", "timeout", "skipped")
        assert f"| {o['name']} |" in summary.split("## Summary")[1]
        if o["status"] == "skipped":
            assert o["reason"], o  # a skip always says why
        if o["name"] not in RUN.split(","):
            assert o["reason"].startswith("not selected")
    slow = next(o for o in record["steps"] if o["name"] == "fake_slow")
    assert slow["status"] == "timeout" and slow["seconds"] < 30
    assert record["environment"]["python"] and record["environment"]["torch"]
    assert list(out.glob("*-cuda-woodbury-*.json")) and list(out.glob("prune-dryrun-cpu-*.md"))
    assert "not judged (not the target's size)" in summary  # tiny sizes are never judged pass/fail
    assert summary.rstrip().splitlines()[-1].startswith("| ")  # the summary table ends the file


def test_cap_kills_the_whole_process_group(tmp_path):
    suite = load()
    pid_file = tmp_path / "pid"
    cmd = ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]
    status, rc, seconds = suite.run_capped(cmd, 1.0, tmp_path / "log", dict(os.environ))
    assert status == "timeout" and rc is None and seconds < 15
    stat = Path(f"/proc/{pid_file.read_text().strip()}/stat")
    # the grandchild is gone (or a zombie waiting for its reaper), not still sleeping; SIGKILL
    # is delivered asynchronously (a CI run saw it still "R" right after the kill), so allow 5 s
    deadline = time.monotonic() + 5.0
    while _alive(stat) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(stat)


def _alive(stat: Path) -> bool:
    """Whether the process of /proc/<pid>/stat exists and is neither a zombie nor dead."""
    try:
        return stat.read_text().split(")")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_budget_and_only_skip_with_reasons(tmp_path):
    suite = load()
    args = suite.parse_args(["--dry-run", "--only", "environment"])
    record = {"suite": {"dry_run": True}, "steps": []}
    step = suite.Step("x", "never runs", ["false"], 10)
    o = suite.run_step(step, 100.0, 1, args, tmp_path, record)
    assert o["status"] == "skipped" and o["reason"].startswith("not selected")
    args.only = None
    o = suite.run_step(step, 2.0, 1, args, tmp_path, record)
    assert o["status"] == "skipped" and o["reason"].startswith("budget exhausted")


def test_check_falls_back_when_the_command_is_missing(tmp_path):
    suite = load()
    fallback = suite.check_fallback(("test_cuda.py",))
    got = fallback({"rc": 2}, "obert-kernels: error: argument command: invalid choice: 'check'")
    assert got and got[0][-1].endswith("test_cuda.py") and "does not exist" in got[1]
    assert fallback({"rc": 1}, "1 failed") is None  # a real check failure is a failure, not a fallback


def write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def test_targets_judged_only_at_the_target_size(tmp_path):
    suite = load()
    record = {"steps": []}
    methods = {"naive": {"seconds": 20.0}, "cuda-dense": {"seconds": 0.4, "speedup_vs_naive": 50.0, "within_spec_tolerance": True,
               "rel_err_vs_float64": 1e-7}, "cuda-packed": {"seconds": 0.6, "speedup_vs_naive": 33.3, "within_spec_tolerance": True,
               "rel_err_vs_float64": 1e-7}, "triton": {"skipped": "no Triton"}}
    write(tmp_path / "gpu-cuda-woodbury-x.json", {"config": {"d": 85_000_000, "block_size": 50, "num_grads": 1024},
                                                  "methods": methods})
    rows = {r["target"]: r["verdict"] for r in suite.fisher_targets(tmp_path, record)}
    assert rows["F⁻¹ build < 0.5 s (cuda-dense)"] == "pass" and rows["F⁻¹ build < 0.5 s (cuda-packed)"] == "FAIL"
    assert rows["≥ 30× naive (cuda-packed)"] == "pass" and rows["F⁻¹ build < 0.5 s (triton)"] == "not measured"
    write(tmp_path / "prune-gpu-x.json", {"finv_memory": {"d": 1000, "B": 50, "dense_bytes": 100, "packed_bytes": 51,
                                                          "packed_over_dense": 0.51}})
    [mem] = suite.memory_targets(tmp_path, record)
    assert mem["verdict"] == "not judged (not the target's size)"
    [missing] = suite.triton_targets(tmp_path, record)
    assert missing["verdict"] == "not measured" and "not reached" in missing["measured"]


def test_prune_bench_minilm_shapes_and_phase_clock():
    spec = importlib.util.spec_from_file_location("bench_prune_gpu", ROOT / "bench" / "bench_prune_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shapes = bench.minilm_shapes()
    assert len(shapes) == 36 and sum(a * b for _, (a, b) in shapes) == 10_616_832  # all-MiniLM-L6-v2's encoder Linears

    class FakeOps:  # obs_update calling obs_update (as packed storage does tile by tile) counts once
        def obs_scores(self):
            return 1

        def obs_update(self, depth=2):
            return 0 if depth == 0 else self.obs_update(depth - 1)

    ops = FakeOps()
    for name in bench.PHASE_OPS:
        if not hasattr(ops, name):
            setattr(ops, name, lambda: None)
    with bench.PhaseClock(ops, "cpu") as clock:
        ops.obs_update()
        ops.obs_scores()
    assert clock.calls["update"] == 1 and clock.calls["scoring"] == 1 and clock.calls["inversion"] == 0
    assert ops.obs_update.__name__ == "obs_update"  # restored on exit


def test_sigterm_ends_the_running_step_and_reports_every_step(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, str(SUITE), "--dry-run", "--fake-slow-cap-s", "120", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "01-fake_slow.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "sleeping" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.terminate()
    assert proc.wait(timeout=30) == 143
    record = json.loads((out / "suite.json").read_text())
    assert "interrupted" in record["suite"]
    assert [o["reason"] for o in record["steps"][:2]] == ["the suite was interrupted while it ran",
                                                          "the suite was interrupted before it"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sleeping past the cap" not in ps  # the step's process went down with the suite
