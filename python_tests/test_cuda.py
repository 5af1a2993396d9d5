"""What is specific to the CUDA backend: its build status and compiled archs, how it reports
itself without a GPU, the binding's own checks, its stream and its reasons on a GPU.

The ops themselves run on the CUDA backend (on a GPU) in python_tests/ops/, the pruner on
it in test_pruner_backends.py. On a CPU-only machine the GPU tests skip with a reason; the
extension's presence and its "no CUDA device" report are checked. CI sets OBERT_KERNELS_BUILD_CUDA=1, which makes the
extension's absence a failure here (a kernel that does not compile cannot land).
The kernels' per-block programs also run on the CPU in test_cuda_harness.py.
"""
import os

import pytest
import torch
from conftest import naive_fp32_error, random_grads, rel_err, spec_tolerance

from obert_kernels import ops, parse_pattern
from obert_kernels.ops.backends import cuda as cuda_backend

HAS_GPU = torch.cuda.is_available()
BUILT = cuda_backend.extension is not None
needs_gpu = pytest.mark.skipif(not (HAS_GPU and BUILT), reason=(
    "no CUDA device (torch.cuda.is_available() is False)" if not HAS_GPU else cuda_backend.status()))


def test_extension_is_built_when_the_build_was_required():
    if os.environ.get("OBERT_KERNELS_BUILD_CUDA") != "1":
        pytest.skip("OBERT_KERNELS_BUILD_CUDA is not 1: the extension is optional here")
    assert BUILT, cuda_backend.status()
    assert set(cuda_backend.extension.compiled_archs.split(",")) >= {"sm_80", "sm_90"}


def test_status_says_what_is_missing():
    line = cuda_backend.status()
    if not BUILT:
        assert "not built" in line and "OBERT_KERNELS_BUILD_CUDA=1" in line
    elif not HAS_GPU:
        assert line.startswith("no CUDA device")
    else:
        assert line.startswith("CUDA extension ready")


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device is present")
@pytest.mark.parametrize("op,call", [
    ("woodbury_update", lambda f: dict(finv=f, grads=torch.randn(2, 8))),
    ("obs_scores", lambda f: dict(weight=torch.randn(8), finv=f, pattern=parse_pattern("unstructured"))),
    ("obs_update", lambda f: dict(weight=torch.randn(8), finv=f, pattern=parse_pattern("2:4"), update="obs")),
])
def test_without_a_device_cuda_says_so_and_auto_falls_back(op, call):
    finv = ops.init_finv(2, 4, 1.0)
    reasons = ops.not_supported_reasons(op, "cuda", **call(finv))
    expected = "no CUDA device" if BUILT else "not built"
    assert len(reasons) == 1 and expected in reasons[0], reasons
    with pytest.raises(ops.BackendNotSupported, match=expected):
        ops.woodbury_update(finv, torch.randn(2, 8), 2, backend="cuda")
    with pytest.raises(ops.BackendNotSupported, match=expected):  # packed storage too
        ops.woodbury_update(ops.pack_upper(finv), torch.randn(2, 8), 2, backend="cuda")
    assert torch.equal(finv, ops.init_finv(2, 4, 1.0))  # nothing ran
    ops.woodbury_update(finv, torch.randn(2, 8), 2)  # auto: torch
    assert not torch.equal(finv, ops.init_finv(2, 4, 1.0))


@pytest.mark.skipif(not BUILT, reason=cuda_backend.status())
def test_binding_rechecks_its_pointers():
    """The C++ side refuses null and host pointers with ValueError, before any launch."""
    C = cuda_backend.extension
    finv = ops.init_finv(2, 4, 1.0)
    with pytest.raises(ValueError, match="null pointer"):
        C.woodbury_update(0, 2, 4, False, finv.data_ptr(), 4, 8, 8, 1, 1.0, 0, 0)
    with pytest.raises(ValueError, match="finv"):
        C.woodbury_update(finv.data_ptr(), 2, 4, False, finv.data_ptr(), 4, 8, 8, 1, 1.0, 0, 0)
    with pytest.raises(ValueError, match="B must be in 1..128"):
        C.woodbury_update(finv.data_ptr(), 2, 129, False, finv.data_ptr(), 4, 8, 8, 1, 1.0, 0, 0)
    with pytest.raises(ValueError, match="rows per thread"):
        C.woodbury_update(finv.data_ptr(), 2, 4, False, finv.data_ptr(), 4, 8, 8, 1, 1.0, 2, 0)
    with pytest.raises(ValueError, match="group size"):
        C.obs_scores(finv.data_ptr(), 0, finv.data_ptr(), 2, 4, False, 8, 16, 0, 0, 0, finv.data_ptr(), 0)
    assert C.woodbury_max_block_size() == 128 and C.max_group_size() == 8


# ---- on a GPU ------------------------------------------------------------------------
@needs_gpu
def test_woodbury_cuda_runs_on_the_current_stream(seed):
    d, B, m = 500, 50, 32
    grads = random_grads(m, d, device="cuda")
    finv = ops.init_finv(10, B, 1e-2, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ops.woodbury_update(finv, grads, m, backend="cuda")
    stream.synchronize()
    ref = ops.fisher_inverse_ref(grads, B, 1e-2)
    assert rel_err(finv, ref) <= spec_tolerance(naive_fp32_error(grads, B, 1e-2, ref))


@needs_gpu
def test_cuda_reasons_on_a_gpu():
    f64 = ops.init_finv(2, 4, 1.0, dtype=torch.float64, device="cuda")
    assert "float32" in ops.not_supported_reasons("woodbury_update", "cuda", finv=f64, grads=torch.randn(1, 8, device="cuda"))[0]
    cpu = ops.init_finv(2, 4, 1.0)
    assert "cpu" in ops.not_supported_reasons("woodbury_update", "cuda", finv=cpu, grads=torch.randn(1, 8))[0]
    big = ops.init_finv(1, 130, 1.0, device="cuda")
    assert "B ≤ 128" in ops.not_supported_reasons("woodbury_update", "cuda", finv=big, grads=torch.randn(1, 130, device="cuda"))[0]
    call = dict(finv=ops.init_finv(2, 4, 1.0, device="cuda"), grads=torch.randn(1, 8, device="cuda"))
    # auto prefers Triton over CUDA (ops/dispatch.py PREFERENCE); CUDA when Triton cannot serve the call
    triton_serves = not ops.not_supported_reasons("woodbury_update", "triton", **call) and not _triton_interpreted()
    assert ops.dispatch.resolve("woodbury_update", "auto", **call)[0] == ("triton" if triton_serves else "cuda")
    assert ops.dispatch.resolve("woodbury_update", "cuda", **call)[0] == "cuda"  # still there by name


def _triton_interpreted() -> bool:
    try:
        from obert_kernels.ops.backends import triton as triton_backend
    except ImportError:
        return False
    return triton_backend.INTERPRETED
