"""``python -m obert_kernels check``: every op × backend × storage against the float64 oracles, exit 1 on a mismatch."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from obert_kernels import ops
from obert_kernels.app import check as check_mod
from obert_kernels.app.cli import main
from obert_kernels.ops import dispatch
from obert_kernels.ops.backends import cpp

ROOT = Path(__file__).resolve().parents[1]
# (op, variant prefix) of every case the full check runs
FULL_CASES = ([("woodbury_update", ""), ("fisher_accumulate+fisher_invert", "direct path")]
              + [("obs_scores", f"{p}{f}") for p in ("unstructured", "block4", "2:4") for f in ("", " +factors")]
              + [("obs_update", f"{p} {u}") for p in ("unstructured", "block4", "2:4") for u in ("obs", "joint", "none")]
              + [("obs_apply", f"{p} obs_update(factors=)") for p in ("unstructured", "block4", "2:4")]
              + [("sequential_order", p) for p in ("unstructured", "block4", "2:4")])


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_full_check_here_lists_every_op_backend_and_storage_and_exits_0(tmp_path, seed):
    """What a user gets on this machine: a subprocess without TRITON_INTERPRET, so Triton is
    'not supported' with the reason that says how to run it (and --interpret is offered)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "check.json"
    res = subprocess.run([sys.executable, "-m", "obert_kernels", "check", "--seed", str(seed), "--json", str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(out)
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    combos = {(r["op"], r["variant"], r["device"], r["storage"], r["backend"]) for r in rows}
    assert combos == {(op, v, d, s, b) for op, v in FULL_CASES for d in devices for s in ("dense", "packed")
                      for b in ops.BACKENDS}
    assert len(rows) == len(combos)
    for r in rows:
        assert r["status"] in ("ok", "not supported")
        if r["status"] == "not supported":
            assert r["reasons"] and all(r["reasons"])  # every backend that cannot run says why
        else:
            assert r["max_rel_err"] <= r["tolerance"]
    assert all(r["status"] == "ok" for r in rows if r["backend"] == "torch")
    for line in res.stdout.splitlines():  # the printed table has the same rows
        if " torch " in line and line.startswith(("cpu", "cuda")):
            assert "ok  max rel err" in line
    if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        # Triton installed, no GPU, no interpreter: its reason says how to run it here, and check offers --interpret
        triton = [r for r in rows if r["backend"] == "triton"]
        assert all(r["status"] == "not supported" and any("TRITON_INTERPRET=1" in x for x in r["reasons"]) for r in triton)
        assert "check --interpret" in res.stdout


@pytest.mark.triton
def test_quick_check_runs_triton_under_the_interpreter(tmp_path, capsys, seed):
    triton_backend = pytest.importorskip("obert_kernels.ops.backends.triton", reason="the Triton backend did not load")
    if not torch.cuda.is_available() and not triton_backend.INTERPRETED:
        pytest.skip("Triton kernels are compiled (TRITON_INTERPRET is not 1): they do not run on CPU tensors")
    out = tmp_path / "check.json"
    assert main(["check", "--quick", "--backend", "triton", "--device", "cpu", "--seed", str(seed), "--json", str(out)]) == 0
    rows = _rows(out)
    assert {r["op"] for r in rows} == {"woodbury_update", "fisher_accumulate+fisher_invert", "obs_scores", "obs_update", "obs_apply",
                                       "sequential_order"}
    assert rows and all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert "passed:" in capsys.readouterr().out


def _off_by_a_little(kernel, tensor_of):
    """``kernel`` followed by a 1% error in what it writes (tensor_of(args) picks that tensor)."""

    def broken(*args, **kwargs):
        result = kernel(*args, **kwargs)
        tensor_of(args).mul_(1.01)
        return result

    return broken


@pytest.fixture
def broken_torch_kernel():
    """Register a wrong torch kernel for an op through the public seam (dispatch.register);
    the torch backend registers its real kernels again afterwards."""
    from obert_kernels.ops.backends import torch as torch_backend
    from obert_kernels.ops.backends.torch.update import obs_apply_torch
    from obert_kernels.ops.backends.torch.woodbury import woodbury_update_torch

    wrong = {"woodbury_update": _off_by_a_little(woodbury_update_torch, lambda a: a[0]),
             "obs_apply": _off_by_a_little(obs_apply_torch, lambda a: a[0])}

    def install(op: str) -> None:
        dispatch.register(op, "torch", wrong[op])

    yield install
    torch_backend.register_all()


@pytest.mark.parametrize("op", ["woodbury_update", "obs_apply"])
def test_a_wrong_kernel_is_a_mismatch_and_exit_1(broken_torch_kernel, op, tmp_path, capsys, seed):
    out = tmp_path / "check.json"
    args = ["check", "--quick", "--backend", "torch", "--device", "cpu", "--seed", str(seed), "--json", str(out)]
    assert main(args) == 0  # the real kernels pass
    broken_torch_kernel(op)
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "MISMATCH" in text and "FAILED" in text
    rows = _rows(out)
    assert json.loads(out.read_text())["exit_code"] == 1
    bad = [r for r in rows if r["status"] != "ok"]
    assert bad and all(r["op"] == op and r["status"] == "MISMATCH" for r in bad)
    assert {r["storage"] for r in bad} == {"dense", "packed"}  # packed storage reaches the kernel too
    assert all(r["max_rel_err"] > r["tolerance"] for r in bad)
    for line in text.splitlines():
        if "MISMATCH" in line:
            assert line.split()[1] == op


def test_interpret_runs_itself_again_with_triton_interpret(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, env):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(check_mod.subprocess, "run", fake_run)
    assert main(["check", "--interpret", "--quick", "--backend", "triton", "--json", str(tmp_path / "c.json")]) == 1
    (cmd, env), = calls
    assert cmd[:4] == [sys.executable, "-m", "obert_kernels", "check"] and "--interpret" not in cmd
    assert env["TRITON_INTERPRET"] == "1"
    assert cmd[cmd.index("--backend") + 1] == "triton" and "--quick" in cmd and str(tmp_path / "c.json") in cmd


def test_bad_options_exit_2(capsys):
    assert main(["check", "--backend", "nope"]) == 2
    if not torch.cuda.is_available():
        assert main(["check", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_float64_check_runs_torch_and_says_why_the_float32_kernels_do_not(tmp_path, seed):
    out = tmp_path / "check.json"
    assert main(["check", "--quick", "--dtype", "float64", "--device", "cpu", "--seed", str(seed), "--json", str(out)]) == 0
    rows = _rows(out)
    assert all(r["status"] == "ok" and r["max_rel_err"] < 1e-9 for r in rows if r["backend"] == "torch")
    triton = [r for r in rows if r["backend"] == "triton" and r["status"] == "not supported"]
    assert all(r["reasons"] for r in triton)


def test_info_points_to_check(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "python -m obert_kernels check" in out
    assert f"  cpp backend: {cpp.status()}" in out  # built or not, and whose threads its kernels use
