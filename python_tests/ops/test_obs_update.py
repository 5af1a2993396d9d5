"""ops.obs_update (SPEC §2c) on every backend present, against the float64 oracle (SPEC §4).

Variants are the union of what the per-backend files held before (test_scores_update.py:
float32/float64; test_triton.py: float32; test_cuda.py: 2-D weights, B = 40 for groups of 8,
dense and packed; test_packed.py: packed through several tiles); a backend that cannot serve
a call is skipped with its own reasons. Under the Triton interpreter (CPU, slow) only the
variant the Triton tests always ran there is run. The float32 bound is RTOL for every
backend (test_cuda.py's; the torch and Triton tests had 10·RTOL): the torch backend's largest
error over 40 seeds × every pattern and update was 3.1e-7, against RTOL = 2e-4.
"""
import pytest
import torch
from conftest import RTOL, as_storage, random_finv, random_pruned, rel_err, shape_for

from obert_kernels import ops, parse_pattern

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "3:8"]
UPDATES = ["obs", "joint", "none"]
DTYPES = [torch.float32, torch.float64]
# (F⁻¹ and weight dtype, weight shape, storage, B for groups of 8: conftest.shape_for)
VARIANTS = [
    (torch.float32, "1-D", "dense", 24),
    (torch.float64, "1-D", "dense", 24),
    (torch.float32, "2-D", "dense", 40),
    (torch.float32, "2-D", "packed", 40),
]
# dtype-keyed tolerance of the exact identities below (one weight per block: obs = joint)
CLOSE = {torch.float32: 1e-5, torch.float64: 1e-12}


def variant_id(v):
    dtype, shape, storage, block8 = v
    return f"{str(dtype)[-2:]}-{shape}-{storage}-B8={block8}"


def require_update(backend, weight, finv, pattern="unstructured", update="obs"):
    backend.require("obs_update", weight=weight, finv=finv, pattern=parse_pattern(pattern), update=update)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_update_matches_oracle(seed, backend, small_tiles, pattern, update, variant):
    dtype, shape, storage, block8 = variant
    pat = parse_pattern(pattern)
    d, B = shape_for(pattern, block8=block8)
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=dtype)
    new = random_pruned(d, pattern, 0.3)
    f = finv.to(backend.device, dtype)
    out = w.to(backend.device).clone()
    mask = new.to(backend.device)
    if shape == "2-D":  # as a Linear's weight
        out, mask = out.reshape(-1, pat.group_size), mask.reshape(-1, pat.group_size)
    require_update(backend, out, f, pattern, update)
    if variant != VARIANTS[0]:
        backend.skip_if_interpreted("the interpreter runs the 1-D dense float32 variant")
    ref = ops.obs_update_ref(w, finv, new, pat, update)
    ops.obs_update(out, as_storage(f, storage), mask, pattern, update, backend=backend.name)
    out = out.reshape(-1).cpu()
    assert out.dtype == dtype
    assert torch.equal(out[new], torch.zeros(int(new.sum()), dtype=dtype))  # exactly zero
    assert rel_err(out, ref) < RTOL[dtype]
    if update != "none":  # the update moved the kept weights: the test sees a missing update
        assert rel_err(w, ref) > 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
def test_joint_equals_obs_for_one_weight_per_block(seed, backend, dtype):
    d, B = 60, 10
    finv = random_finv(d, B).to(backend.device, dtype)
    w = torch.randn(d, dtype=dtype, device=backend.device)
    require_update(backend, w, finv, update="joint")
    new = torch.zeros(d, dtype=torch.bool, device=backend.device)
    new[::B] = True
    a, b = w.clone(), w.clone()
    ops.obs_update(a, finv, new, "unstructured", "obs", backend=backend.name)
    ops.obs_update(b, finv, new, "unstructured", "joint", backend=backend.name)
    assert torch.allclose(a, b, rtol=CLOSE[dtype], atol=CLOSE[dtype])
    assert not torch.allclose(a, w, rtol=1e-2, atol=1e-2)  # an update happened


@pytest.mark.parametrize("dtype", DTYPES)
def test_joint_update_cannot_increase_the_quadratic_loss(seed, backend, dtype):
    """Joint OBS minimises ½ δwᵀ F δw over updates that zero P: it beats obs and none."""
    d, B = 120, 12
    finv64 = random_finv(d, B)
    fisher = torch.linalg.inv(finv64)
    finv = finv64.to(backend.device, dtype)
    w = torch.randn(d, dtype=dtype, device=backend.device)
    require_update(backend, w, finv, update="joint")
    backend.skip_if_interpreted("a torch test before the backends shared it; kept off the interpreter for the "
                                "suite's time (3 s there)")
    new = torch.rand(d, device=backend.device) < 0.4

    def loss(update):
        out = w.clone()
        ops.obs_update(out, finv, new, "unstructured", update, backend=backend.name)
        delta = (out - w).double().cpu().reshape(-1, B)
        return 0.5 * torch.einsum("bi,bij,bj->", delta, fisher, delta).item()

    slack = 1e-9 if dtype == torch.float64 else 1e-5
    assert loss("joint") <= loss("obs") * (1 + slack)
    assert loss("joint") <= loss("none") * (1 + slack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("update", ["obs", "joint"])
def test_blocks_without_pruning_are_untouched(seed, backend, dtype, update):
    d, B = 40, 10
    finv = random_finv(d, B).to(backend.device, dtype)
    w = torch.randn(d, dtype=dtype, device=backend.device)
    require_update(backend, w, finv, update=update)
    new = torch.zeros(d, dtype=torch.bool, device=backend.device)
    new[12] = True
    out = w.clone()
    ops.obs_update(out, finv, new, "unstructured", update, backend=backend.name)
    assert torch.equal(out[:10], w[:10]) and torch.equal(out[20:], w[20:])
    assert not torch.equal(out[10:20], w[10:20])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights(seed, backend, dtype):
    d, B = 48, 12
    finv = random_finv(d, B)
    w = torch.randn(d).to(dtype)
    new = torch.rand(d) < 0.3
    out = w.to(backend.device).clone()
    require_update(backend, out, finv.float().to(backend.device))
    ref = ops.obs_update_ref(w, finv, new, parse_pattern("unstructured"), "obs")
    ops.obs_update(out, finv.float().to(backend.device), new.to(backend.device), "unstructured", "obs",
                   backend=backend.name)
    out = out.cpu()
    assert out.dtype == dtype and torch.all(out[new] == 0)
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("update", ["obs", "joint"])
def test_update_on_strided_half_weight(seed, backend, update):
    """A non-contiguous fp16 weight (a transposed Linear weight) is updated in place, in its dtype."""
    finv = random_finv(60, 12)
    f = finv.to(backend.device, torch.float32)
    base = torch.randn(5, 12, device=backend.device).half()
    weight = base.t()  # (12, 5), not contiguous
    require_update(backend, weight, f, update=update)
    new = torch.rand(12, 5, device=backend.device) < 0.3
    expect = weight.clone()
    ops.obs_update(expect, f, new, "unstructured", update, backend="torch")
    ref = ops.obs_update_ref(weight, finv, new, parse_pattern("unstructured"), update)
    ops.obs_update(weight, f, new, "unstructured", update, backend=backend.name)
    assert weight.dtype == torch.float16 and torch.all(weight[new] == 0)
    assert rel_err(weight, expect) < 2e-3 and torch.equal(base.t(), weight)  # written through the view
    assert rel_err(weight.reshape(-1), ref) < 1e-2


@pytest.mark.parametrize("storage", ["dense", "packed"])
def test_non_contiguous_weight(seed, backend, small_tiles, storage):
    d, B = 12 * 20, 12
    finv = random_finv(d, B)
    f = finv.to(backend.device, torch.float32)
    w = torch.randn(20, 12, device=backend.device).t()  # non-contiguous (12, 20)
    require_update(backend, w, f)
    if storage == "packed":
        backend.skip_if_interpreted("Triton reads packed F⁻¹ as dense tiles, which the dense case tests")
    mask = torch.rand(12, 20, device=backend.device) < 0.3
    ref = ops.obs_update_ref(w, finv, mask, parse_pattern("unstructured"), "obs")
    expected = w.contiguous().clone()
    ops.obs_update(expected, f, mask.contiguous(), "unstructured", "obs", backend="torch")
    ops.obs_update(w, as_storage(f, storage), mask, "unstructured", "obs", backend=backend.name)
    assert rel_err(w.contiguous(), expected) < RTOL[torch.float32]
    assert rel_err(w.reshape(-1), ref) < RTOL[torch.float32]


def test_update_on_a_parameter_bumps_its_version(seed, backend):
    """A tensor autograd tracks is updated through copy_ (as torch does), so autograd sees the change."""
    finv = random_finv(40, 10).to(backend.device, torch.float32)
    weight = torch.nn.Parameter(torch.randn(4, 10, device=backend.device))
    require_update(backend, weight, finv)
    expect = weight.detach().clone()
    new = torch.rand(4, 10, device=backend.device) < 0.3
    ops.obs_update(expect, finv, new, "unstructured", "obs", backend="torch")
    version = weight._version
    ops.obs_update(weight, finv, new, "unstructured", "obs", backend=backend.name)
    assert weight._version > version and rel_err(weight, expect) < 1e-5
