"""What is specific to the Triton backend: the interpreter plumbing, its dispatch rules, its
torch fallback on a pivot ≤ 0, and the GPU benchmark's CPU-side pieces.

The ops themselves are tested on every backend in python_tests/ops/ and the pruner on it in
test_pruner_backends.py. On a machine without CUDA, conftest sets TRITON_INTERPRET=1 before
obert_kernels is imported, so the kernels run through the Triton interpreter on the CPU.
Select the Triton tests with ``-m triton``.
"""
import pytest
import torch
from conftest import backend_params, random_finv, rel_err

pytest.importorskip("triton", reason="triton is not installed: pip install 'obert_kernels[triton]'")

from obert_kernels import ops, parse_pattern  # noqa: E402
from obert_kernels.ops import dispatch  # noqa: E402

triton_backend = pytest.importorskip("obert_kernels.ops.backends.triton", reason="the Triton backend did not load")

pytestmark = pytest.mark.triton


def test_cpu_runs_are_interpreted_when_no_gpu():
    """conftest's TRITON_INTERPRET=1 really reaches the kernels (they are InterpretedFunctions)."""
    from triton.runtime.interpreter import InterpretedFunction

    from obert_kernels.ops.backends.triton import KERNELS

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: kernels are compiled")
    assert len(KERNELS) == 10
    assert triton_backend.INTERPRETED == all(isinstance(k, InterpretedFunction) for k in KERNELS)
    import os

    assert triton_backend.INTERPRETED == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_joint_update_redoes_non_positive_definite_blocks_with_torch(seed, backend):
    """A block whose Gauss–Jordan meets a pivot ≤ 0 is not written by the kernel but by torch."""
    tdevice = backend.device
    finv = random_finv(36, 12).float()
    finv[1] = -finv[1]  # negative definite: the first pivot is < 0
    finv = finv.to(tdevice)
    w = torch.randn(36, device=tdevice)
    backend.require("obs_update", weight=w, finv=finv, pattern=parse_pattern("unstructured"), update="joint")
    new = torch.rand(36, device=tdevice) < 0.4
    new[12] = True
    expect = w.clone()
    ops.obs_update(expect, finv, new, "unstructured", "joint", backend="torch")
    out = w.clone()
    ops.obs_update(out, finv, new, "unstructured", "joint", backend="triton")
    assert rel_err(out, expect) < 1e-5


# ---- dispatch ------------------------------------------------------------------------------
def test_auto_stays_on_torch_for_cpu_tensors():
    finv = ops.init_finv(2, 4, 1.0)
    call = dict(finv=finv, grads=torch.randn(1, 8))
    assert dispatch.resolve("woodbury_update", "auto", **call)[0] == "torch"
    if not triton_backend.INTERPRETED:
        pytest.skip("the Triton kernels are compiled: they refuse CPU tensors outright, before auto's rule")
    # with torch refusing too, auto's error lists every backend's reason: Triton's is that
    # auto uses it only on CUDA devices (it serves the call when asked for by name)
    with dispatch.registered("woodbury_update", "torch", lambda *a: None, lambda **_: ["refused for this test"]):
        with pytest.raises(ops.BackendNotSupported) as info:
            dispatch.resolve("woodbury_update", "auto", **call)
    triton_reasons = [r for r in info.value.reasons if r.startswith("triton: ")]
    assert len(triton_reasons) == 1 and "only on CUDA" in triton_reasons[0], info.value.reasons
    assert dispatch.resolve("woodbury_update", "auto", **call)[0] == "torch"  # torch's implementation is back


def test_explicit_triton_on_cpu_runs_under_interpreter_or_says_how(monkeypatch):
    finv = ops.init_finv(2, 4, 1.0)
    grads = torch.randn(3, 8)
    if triton_backend.INTERPRETED:
        out = ops.woodbury_update(finv.clone(), grads, 3, backend="triton")
        assert rel_err(out, ops.woodbury_update(finv.clone(), grads, 3, backend="torch")) < 1e-6
    monkeypatch.setattr(triton_backend, "INTERPRETED", False)
    with pytest.raises(ops.BackendNotSupported, match="TRITON_INTERPRET=1") as info:
        ops.woodbury_update(finv, grads, 3, backend="triton")
    assert "CPU" in info.value.reasons[0]
    assert torch.equal(finv, ops.init_finv(2, 4, 1.0))  # nothing ran
    ops.woodbury_update(finv, grads, 3)  # auto: torch


def test_reasons_name_what_the_kernels_cannot_serve():
    f64 = ops.init_finv(2, 4, 1.0, dtype=torch.float64)
    reasons = ops.not_supported_reasons("obs_scores", "triton", weight=torch.randn(8), finv=f64,
                                        pattern=parse_pattern("unstructured"))
    assert any("float64" in r and "backend='torch'" in r for r in reasons)
    big = torch.zeros(1, 130, 130)
    reasons = ops.not_supported_reasons("woodbury_update", "triton", finv=big, grads=torch.randn(1, 130))
    assert any("B=130 > 128" in r for r in reasons)
    assert not [r for r in ops.not_supported_reasons("obs_update", "triton", weight=torch.randn(130), finv=big,
                                                       pattern=parse_pattern("unstructured"), update="none")
                if "B=130" in r]  # zeroing alone holds no block
    wide = parse_pattern("2:32")
    reasons = ops.not_supported_reasons("obs_scores", "triton", weight=torch.randn(64), finv=torch.zeros(1, 64, 64),
                                        pattern=wide)
    assert any("more than 16" in r for r in reasons)
    # auto falls back to torch for what Triton cannot serve, explicit raises with the reasons
    assert ops.obs_scores(torch.randn(8), f64).dtype == torch.float64
    with pytest.raises(ops.BackendNotSupported, match="float64"):
        ops.obs_scores(torch.randn(8), f64, backend="triton")


# ---- the GPU benchmark's CPU-side pieces ---------------------------------------------------
def _bench_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_triton_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_triton_gpu", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_counts_configs_and_memory():
    bench = _bench_module()
    args = bench.parse_args([])
    configs = bench.enumerate_configs(bench.parse_list(args.d), bench.parse_list(args.block_sizes),
                                      bench.parse_list(args.chunks))
    assert len(configs) == 3 * 4 * 3 and configs[-1].d == 85_000_000
    assert {c.B for c in configs} == {32, 50, 64, 128} and {c.k for c in configs} == {8, 32, 128}
    big = bench.Config(85_000_000, 128, 128)
    assert bench.finv_bytes(big) == 4 * 664_063 * 128 * 128  # ceil(d/B) blocks: 43.5 GB
    assert bench.memory_needed(big, 1) > 80e9  # does not fit an 80 GB H100: skipped with a reason
    bert = bench.Config(85_000_000, 50, 32)
    assert bench.woodbury_flops_per_grad(bert) == 4.0 * 85_000_000 * 50  # SPEC §5
    assert bench.naive_bytes_per_grad(bert) == 3 * bench.finv_bytes(bert)
    assert bench.fused_bytes_per_chunk(bert) == 2 * bench.finv_bytes(bert) + 4 * 1_700_000 * 32 * 50
    assert bench.rotation_count(bench.Config(1_000_000, 32, 8), 50 * 2**20) >= 2  # small chunks rotate
    quick = bench.parse_args(["--quick"])
    assert (quick.d, quick.block_sizes, quick.chunks) == ("1e6,8.5e7", "50", "32")


def test_gpu_bench_markdown_renders():
    bench = _bench_module()
    record = {"environment": {"device": "X", "date": "2026-01-01", "torch": "t", "triton": "3", "python": "3",
                              "cuda": "13", "command": "c"},
              "ceilings": {"bandwidth_gbps": 3000.0, "fma_tflops": 50.0},
              "checks": [{"d": 85_000_000, "B": 50, "k": 32, "rel_err": 1e-7, "err_vs_naive": 1.0}],
              "fisher": [{"d": 85_000_000, "B": 50, "k": 32, "method": "triton", "ms_per_grad": 1.0, "tflops": 17.0,
                          "fma_fraction": 0.34, "gbps": 100.0, "bw_fraction": 0.03, "vs_naive": 21.0, "G": 1,
                          "num_warps": 2}],
              "scores_update": [{"d": 85_000_000, "B": 50, "op": "obs_scores", "pattern": "unstructured", "ms": 1.0,
                                 "vs_read_finv": 0.1, "rel_err": 1e-8, "passed": True}],
              "skipped": [{"d": 85_000_000, "B": 128, "k": 128, "why": "needs 88 GB"}]}
    record["targets"] = bench.target_lines(record)
    text = bench.markdown(record)
    assert "21.0× naive" in record["targets"][0] and "34% of the FMA ceiling" in record["targets"][0]
    assert "| 8.5e+07 | 50 | 32 | triton (G=1, 2w) |" in text and "needs 88 GB" in text
