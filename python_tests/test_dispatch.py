"""Backend dispatch: auto falls back and says why; an explicit backend raises."""
import pytest
import torch

from obert_kernels import ops, parse_pattern
from obert_kernels.ops import dispatch


def test_auto_serves_cpu_tensors_with_torch():
    finv = ops.init_finv(2, 4, 1.0)
    name, _ = dispatch.resolve("woodbury_update", "auto", finv=finv, grads=torch.randn(1, 8))
    assert name == "torch"


def _serve_everything(**_call):
    return []


@pytest.mark.parametrize("storage", ["dense", "packed"])
def test_auto_prefers_triton_over_cuda(storage):
    """Item 7 of issue 10: with both able to serve (stand-ins registered here), auto takes
    Triton, also for a packed F⁻¹ that CUDA would read natively; CUDA stays there by name."""
    assert dispatch.PREFERENCE.index("triton") < dispatch.PREFERENCE.index("cuda") < dispatch.PREFERENCE.index("torch")
    stand_in = lambda *a: None  # noqa: E731
    with dispatch.registered("obs_scores", "triton", stand_in, _serve_everything, _serve_everything), \
            dispatch.registered("obs_scores", "cuda", stand_in, _serve_everything, _serve_everything, packed=True):
        finv = ops.init_finv(1, 4, 1.0)
        finv = ops.pack_upper(finv) if storage == "packed" else finv
        call = dict(weight=torch.randn(4), pattern=ops.parse_pattern("unstructured"))
        assert dispatch.resolve_backend("obs_scores", "auto", finv, **call) == "triton"
        assert dispatch.resolve_backend("obs_scores", "cuda", finv, **call) == "cuda"


def test_unknown_backend_is_rejected():
    finv = ops.init_finv(2, 4, 1.0)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.woodbury_update(finv, torch.randn(1, 8), 1, backend="numba")
    assert ops.not_supported_reasons("woodbury_update", "numba") == [
        "unknown backend 'numba'; choose from torch, triton, cuda, cpp or 'auto'"
    ]


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_explicit_backend_that_cannot_serve_says_why(backend):
    finv = ops.init_finv(2, 4, 1.0)
    reasons = ops.not_supported_reasons("woodbury_update", backend, finv=finv, grads=torch.randn(1, 8))
    if not reasons:
        pytest.skip(f"{backend} serves CPU tensors here")
    with pytest.raises(ops.BackendNotSupported) as info:
        ops.woodbury_update(finv, torch.randn(1, 8), 1, backend=backend)
    assert info.value.reasons == reasons and all(isinstance(r, str) and r for r in reasons)
    assert torch.equal(finv, ops.init_finv(2, 4, 1.0))  # nothing ran


def test_registered_reasons_are_consulted():
    calls = []

    def refuse(**call):
        calls.append(call)
        return ["never on Tuesdays"]

    finv = ops.init_finv(1, 4, 1.0)
    with dispatch.registered("obs_scores", "cuda", lambda *a: None, refuse):
        with pytest.raises(ops.BackendNotSupported, match="never on Tuesdays"):
            ops.obs_scores(torch.randn(4), finv, backend="cuda")
        assert ops.obs_scores(torch.randn(4), finv).shape == (4,)  # auto fell back to torch
        assert len(calls) == 2
    # what was registered before is back: the CUDA backend's own reasons again
    assert "never on Tuesdays" not in "; ".join(
        ops.not_supported_reasons("obs_scores", "cuda", weight=torch.randn(4), finv=finv, pattern=parse_pattern("unstructured")))
