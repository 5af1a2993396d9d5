"""Scoring hands the "obs" update its per-candidate solves (ops/scores.py, ops/update.py):
the factors against the float64 oracle, the update from them against the update oracle,
the fallback when a mask is not made of whole candidates, and the pruner using them."""
import pytest
import torch
from conftest import RTOL, random_finv, rel_err, shape_for

from obert_kernels import FisherPruner, ops, parse_pattern
from obert_kernels.core import selection
from obert_kernels.ops.backends.torch import update as update_mod

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "3:8"]
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.fixture
def on(device, request):
    """(device, backend) pairs this machine can run; Triton on the CPU only when interpreted."""
    backend = request.param
    if backend == "triton":
        tri = pytest.importorskip("obert_kernels.ops.backends.triton", reason="the Triton backend did not load")
        if device == "cpu" and not tri.INTERPRETED:
            pytest.skip("Triton kernels are compiled (TRITON_INTERPRET is not 1): they do not run on CPU tensors")
    return device, backend


def problem(pattern: str):
    """A pattern, an awkward size (conftest.shape_for), a float64 F⁻¹ and fresh weights."""
    p = parse_pattern(pattern)
    d, B = shape_for(pattern)
    return p, d, random_finv(d, B), torch.randn(d)


def chosen_mask(scores, pattern, fraction=0.3):
    """What selection prunes from these scores: N:M per group, else the lowest ``fraction`` of units."""
    if pattern.is_nm:
        return selection.select_nm(scores, pattern)
    units = selection.select_lowest(scores, int(fraction * scores.numel()))
    return selection.expand_groups(units, pattern.group_size)


@pytest.mark.parametrize("on", BACKENDS, indirect=True)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_factors_match_oracle_and_leave_scores_alone(seed, on, pattern):
    device, backend = on
    p, d, finv, w = problem(pattern)
    ref = ops.obs_factors_ref(w, finv, p)
    f32 = finv.to(device, torch.float32)
    scores, factors = ops.obs_scores(w.to(device), f32, p, return_factors=True, backend=backend)
    assert factors.shape == ref.shape == ops.factor_shape(p, d)
    assert rel_err(factors.cpu(), ref) < RTOL[torch.float32]
    assert torch.equal(scores, ops.obs_scores(w.to(device), f32, p, backend=backend))
    # a solve with the plain diagonal instead of the sub-block would fail the bound
    if p.group_size > 1 and (not p.is_nm or p.n_prune > 1):  # candidates of more than one weight
        diag_only = ops.obs_factors_ref(w, torch.diag_embed(finv.diagonal(dim1=1, dim2=2)), p)
        assert rel_err(diag_only, ref) > 100 * RTOL[torch.float32]


@pytest.mark.parametrize("on", BACKENDS, indirect=True)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_update_from_factors_matches_oracle(seed, on, pattern):
    device, backend = on
    p, d, finv, w = problem(pattern)
    f32 = finv.to(device, torch.float32)
    scores, factors = ops.obs_scores(w.to(device), f32, p, return_factors=True, backend=backend)
    new = chosen_mask(scores, p)
    assert ops.obs_direction(factors, new, p) is not None  # whole candidates: no solve left to do
    ref = ops.obs_update_ref(w, finv, new.cpu(), p, "obs")
    out = w.to(device).clone()
    ops.obs_update(out, f32, new, p, "obs", factors=factors, backend=backend)
    assert torch.all(out[new] == 0)
    assert rel_err(out.cpu(), ref) < 10 * RTOL[torch.float32]
    # the factors are what the update uses: doubled factors give a visibly different answer
    wrong = w.to(device).clone()
    ops.obs_update(wrong, f32, new, p, "obs", factors=2 * factors, backend=backend)
    assert rel_err(wrong.cpu(), ref) > 1e-2


def test_update_from_factors_does_not_solve(seed, monkeypatch):
    p, d, finv, w = problem("2:4")
    finv = finv.float()
    scores, factors = ops.obs_scores(w, finv, p, return_factors=True, backend="torch")
    new = chosen_mask(scores, p)

    def no_solve(*_a, **_k):
        raise AssertionError("the update solved a group it had factors for")

    monkeypatch.setattr(update_mod, "_masked_solve", no_solve)
    ops.obs_update(w.clone(), finv, new, p, "obs", factors=factors, backend="torch")
    with pytest.raises(AssertionError, match="solved"):  # without factors it does solve: the patch is live
        ops.obs_update(w.clone(), finv, new, p, "obs", backend="torch")


@pytest.mark.parametrize("on", BACKENDS, indirect=True)
@pytest.mark.parametrize("pattern", ["block4", "2:4"])
def test_masks_not_made_of_candidates_fall_back_to_solving(seed, on, pattern):
    device, backend = on
    p, d, finv, w = problem(pattern)
    pruned = torch.zeros(d, dtype=torch.bool)
    if p.is_nm:  # groups with one weight already pruned: the new set is part of a subset
        pruned[0::8] = True
        w[pruned] = 0.0
    f32 = finv.to(device, torch.float32)
    scores, factors = ops.obs_scores(w.to(device), f32, p, pruned.to(device), return_factors=True, backend=backend)
    new = chosen_mask(scores, p).cpu() & ~pruned
    if not p.is_nm:
        new[1] = ~new[1]  # part of the first group
    assert ops.obs_direction(factors, new.to(device), p) is None
    ref = ops.obs_update_ref(w, finv, new, p, "obs")
    out = w.to(device).clone()
    ops.obs_update(out, f32, new.to(device), p, "obs", factors=factors, backend=backend)
    assert rel_err(out.cpu(), ref) < 10 * RTOL[torch.float32]


def test_packed_storage_gives_the_same_factors_and_update(seed):
    p, d, finv, w = problem("block4")
    finv = finv.float()
    packed = ops.pack_upper(finv)
    scores, factors = ops.obs_scores(w, finv, p, return_factors=True, backend="torch")
    pscores, pfactors = ops.obs_scores(w, packed, p, return_factors=True, backend="torch")
    assert torch.equal(scores, pscores) and torch.allclose(factors, pfactors)
    new = chosen_mask(scores, p)
    dense_out, packed_out = w.clone(), w.clone()
    ops.obs_update(dense_out, finv, new, p, "obs", factors=factors, backend="torch")
    ops.obs_update(packed_out, packed, new, p, "obs", factors=pfactors, backend="torch")
    assert torch.allclose(dense_out, packed_out, atol=1e-6)


def test_factor_argument_errors():
    p, d, finv, w = problem("block4")
    finv = finv.float()
    _, factors = ops.obs_scores(w, finv, p, return_factors=True)
    new = torch.zeros(d, dtype=torch.bool)
    with pytest.raises(ValueError, match="update='obs' only"):
        ops.obs_update(w.clone(), finv, new, p, "joint", factors=factors)
    with pytest.raises(ValueError, match="shape"):
        ops.obs_update(w.clone(), finv, new, p, "obs", factors=factors.reshape(-1))
    reasons = ops.not_supported_reasons("obs_scores", "cuda", weight=w, finv=finv, pattern=p, return_factors=True)
    assert any("factors" in r for r in reasons)
    assert not any("factors" in r for r in ops.not_supported_reasons("obs_scores", "cuda", weight=w, finv=finv, pattern=p))


@pytest.mark.parametrize("pattern", ["block4", "2:4"])
def test_pruner_obs_update_uses_the_factors(seed, monkeypatch, pattern):
    """update="obs" solves each group once, in scoring; "joint" still solves in the update."""
    solves = []
    real = update_mod._masked_solve
    monkeypatch.setattr(update_mod, "_masked_solve", lambda *a: solves.append(1) or real(*a))
    for update in ("obs", "joint"):
        model = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
        pruner = FisherPruner(model, block_size=8, num_grads=12, damp=1e-3, pattern=pattern, update=update,
                              chunk_size=4, verbose=False, backend="torch")
        for _ in range(12):
            pruner.add_grads([torch.randn_like(model[0].weight), torch.randn_like(model[2].weight)])
        solves.clear()
        pruner.prune(0.5)
        assert (len(solves) > 0) == (update == "joint"), update
