"""Saliency scores (SPEC §2b) and the weight update (SPEC §2c) against the float64 oracle."""
import pytest
import torch
from conftest import RTOL, random_finv, random_pruned, rel_err, shape_for

from obert_kernels import ops, parse_pattern

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "3:8"]
UPDATES = ["obs", "joint", "none"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scores_match_oracle(seed, device, pattern, dtype):
    d, B = shape_for(pattern)
    finv = random_finv(d, B)
    w = torch.randn(d)
    pruned = random_pruned(d, pattern)
    ref = ops.obs_scores_ref(w, finv, parse_pattern(pattern), pruned)
    out = ops.obs_scores(w.to(device), finv.to(device, dtype), pattern, pruned.to(device), backend="torch")
    assert out.shape == ref.shape and out.dtype == dtype
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out).cpu(), finite)
    assert torch.equal(out.cpu()[~finite], ref[~finite])  # −∞ / +∞ exactly where the oracle has them
    assert rel_err(out.cpu()[finite], ref[finite]) < RTOL[dtype]


def test_unstructured_scores_formula(seed):
    finv = random_finv(50, 10)
    w = torch.randn(50)
    expected = w.double() ** 2 / (2 * finv.diagonal(dim1=1, dim2=2).reshape(-1))
    assert torch.allclose(ops.obs_scores(w, finv, "unstructured"), expected)


def test_nm_saturated_group_keeps_its_pruned_subset():
    d, B = 8, 8
    finv = random_finv(d, B)
    pruned = torch.tensor([True, False, False, True, False, False, False, False])
    s = ops.obs_scores(torch.randn(d), finv, "2:4", pruned)
    subsets = parse_pattern("2:4").subsets
    assert s[0, subsets.index((0, 3))] == float("-inf")
    assert torch.isinf(s[0]).all()  # any other subset would revive a pruned weight
    assert torch.isfinite(s[1]).all()


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_matches_oracle(seed, device, pattern, update, dtype):
    d, B = shape_for(pattern)
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=dtype)
    new = random_pruned(d, pattern, 0.3)
    ref = ops.obs_update_ref(w, finv, new, parse_pattern(pattern), update)
    out = w.to(device).clone()
    ops.obs_update(out, finv.to(device, dtype), new.to(device), pattern, update, backend="torch")
    out = out.cpu()
    assert torch.all(out[new] == 0)  # exactly zero
    assert rel_err(out, ref) < RTOL[dtype] * (10 if dtype == torch.float32 else 1)
    if update != "none":  # the update moved the kept weights: the test sees a missing update
        assert rel_err(w, ref) > 1e-2


def test_joint_equals_obs_for_one_weight_per_block(seed):
    d, B = 60, 10
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=torch.float64)
    new = torch.zeros(d, dtype=torch.bool)
    new[::B] = True
    a, b = w.clone(), w.clone()
    ops.obs_update(a, finv, new, "unstructured", "obs")
    ops.obs_update(b, finv, new, "unstructured", "joint")
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_joint_update_cannot_increase_the_quadratic_loss(seed):
    """Joint OBS minimises ½ δwᵀ F δw over updates that zero P: it beats obs and none."""
    d, B = 120, 12
    finv = random_finv(d, B)
    fisher = torch.linalg.inv(finv)
    w = torch.randn(d, dtype=torch.float64)
    new = torch.rand(d) < 0.4

    def loss(update):
        out = w.clone()
        ops.obs_update(out, finv, new, "unstructured", update)
        delta = (out - w).reshape(-1, B)
        return 0.5 * torch.einsum("bi,bij,bj->", delta, fisher, delta).item()

    assert loss("joint") <= loss("obs") * (1 + 1e-9)
    assert loss("joint") <= loss("none") * (1 + 1e-9)


def test_blocks_without_pruning_are_untouched(seed):
    d, B = 40, 10
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=torch.float64)
    new = torch.zeros(d, dtype=torch.bool)
    new[12] = True
    out = w.clone()
    ops.obs_update(out, finv, new, "unstructured", "joint")
    assert torch.equal(out[:10], w[:10]) and torch.equal(out[20:], w[20:])
    assert not torch.equal(out[10:20], w[10:20])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights(seed, dtype):
    d, B = 48, 12
    finv = random_finv(d, B)
    w = torch.randn(d).to(dtype)
    new = torch.rand(d) < 0.3
    ref = ops.obs_update_ref(w, finv, new, parse_pattern("unstructured"), "obs")
    out = w.clone()
    ops.obs_update(out, finv.float(), new, "unstructured", "obs")
    assert out.dtype == dtype and torch.all(out[new] == 0)
    assert rel_err(out, ref) < 1e-2


def test_argument_errors():
    finv = random_finv(40, 10).float()
    w = torch.randn(40)
    with pytest.raises(ValueError, match="update must be"):
        ops.obs_update(w, finv, torch.zeros(40, dtype=torch.bool), "unstructured", "exact")
    with pytest.raises(ValueError, match="weights but finv holds"):
        ops.obs_scores(torch.randn(41), finv)
    with pytest.raises(ValueError, match="divisible by the group size"):
        ops.obs_scores(w, finv, "block4")
    with pytest.raises(TypeError, match="bool"):
        ops.obs_update(w, finv, torch.zeros(40), "unstructured", "obs")
    with pytest.raises(TypeError, match="floating point"):
        ops.obs_scores(torch.ones(40, dtype=torch.int64), finv)
    with pytest.raises(ValueError, match="unknown pattern"):
        ops.obs_scores(w, finv, "block3")
