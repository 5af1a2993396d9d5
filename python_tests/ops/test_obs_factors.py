"""Scoring hands the "obs" update its per-candidate solves: ops.obs_scores(..., return_factors=True)
and ops.obs_update(..., factors=) (op "obs_apply") on every backend present: the factors
against the float64 oracle, the update from them against the update oracle, the fallback
when a mask is not made of whole candidates, dense and packed storage."""
import pytest
import torch
from conftest import RTOL, as_storage, assert_scores_match, random_finv, rel_err, shape_for

from obert_kernels import ops, parse_pattern
from obert_kernels.core import selection

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "3:8"]


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


def require_factors(backend, w, f, p):
    backend.require("obs_scores", weight=w, finv=f, pattern=p, return_factors=True)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_factors_match_oracle_and_leave_scores_alone(seed, backend, pattern):
    p, d, finv, w = problem(pattern)
    f32, w = finv.to(backend.device, torch.float32), w.to(backend.device)
    require_factors(backend, w, f32, p)
    ref = ops.obs_factors_ref(w, finv, p)
    plain = ops.obs_scores(w, f32, p, backend=backend.name)
    assert_scores_match(plain, ops.obs_scores_ref(w, finv, p), torch.float32)  # fresh fp32 weights' scores
    scores, factors = ops.obs_scores(w, f32, p, return_factors=True, backend=backend.name)
    assert factors.shape == ref.shape == ops.factor_shape(p, d)
    assert rel_err(factors.cpu(), ref) < RTOL[torch.float32]
    assert torch.equal(scores, plain)
    # a solve with the plain diagonal instead of the sub-block would fail the bound
    if p.group_size > 1 and (not p.is_nm or p.n_prune > 1):  # candidates of more than one weight
        diag_only = ops.obs_factors_ref(w, torch.diag_embed(finv.diagonal(dim1=1, dim2=2)), p)
        assert rel_err(diag_only, ref) > 100 * RTOL[torch.float32]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_update_from_factors_matches_oracle(seed, backend, pattern):
    p, d, finv, w = problem(pattern)
    f32 = finv.to(backend.device, torch.float32)
    require_factors(backend, w.to(backend.device), f32, p)
    scores, factors = ops.obs_scores(w.to(backend.device), f32, p, return_factors=True, backend=backend.name)
    new = chosen_mask(scores, p)
    assert ops.obs_direction(factors, new, p) is not None  # whole candidates: no solve left to do
    ref = ops.obs_update_ref(w, finv, new.cpu(), p, "obs")
    out = w.to(backend.device).clone()
    ops.obs_update(out, f32, new, p, "obs", factors=factors, backend=backend.name)
    assert torch.all(out[new] == 0)
    assert rel_err(out.cpu(), ref) < 10 * RTOL[torch.float32]
    # the factors are what the update uses: doubled factors give a visibly different answer
    wrong = w.to(backend.device).clone()
    ops.obs_update(wrong, f32, new, p, "obs", factors=2 * factors, backend=backend.name)
    assert rel_err(wrong.cpu(), ref) > 1e-2


@pytest.mark.parametrize("pattern", ["block4", "2:4"])
def test_masks_not_made_of_candidates_fall_back_to_solving(seed, backend, pattern):
    p, d, finv, w = problem(pattern)
    pruned = torch.zeros(d, dtype=torch.bool)
    if p.is_nm:  # groups with one weight already pruned: the new set is part of a subset
        pruned[0::8] = True
        w[pruned] = 0.0
    f32 = finv.to(backend.device, torch.float32)
    require_factors(backend, w.to(backend.device), f32, p)
    scores, factors = ops.obs_scores(w.to(backend.device), f32, p, pruned.to(backend.device), return_factors=True,
                                     backend=backend.name)
    new = chosen_mask(scores, p).cpu() & ~pruned
    if not p.is_nm:
        new[1] = ~new[1]  # part of the first group
    assert ops.obs_direction(factors, new.to(backend.device), p) is None
    ref = ops.obs_update_ref(w, finv, new, p, "obs")
    out = w.to(backend.device).clone()
    ops.obs_update(out, f32, new.to(backend.device), p, "obs", factors=factors, backend=backend.name)
    assert rel_err(out.cpu(), ref) < 10 * RTOL[torch.float32]


def test_packed_storage_gives_the_same_factors_and_update(seed, backend, small_tiles):
    p, d, finv, w = problem("block4")
    f32, w = finv.to(backend.device, torch.float32), w.to(backend.device)
    require_factors(backend, w, f32, p)
    backend.skip_if_interpreted("Triton reads packed F⁻¹ as dense tiles, which the dense tests run")
    packed = as_storage(f32, "packed")
    scores, factors = ops.obs_scores(w, f32, p, return_factors=True, backend=backend.name)
    pscores, pfactors = ops.obs_scores(w, packed, p, return_factors=True, backend=backend.name)
    assert torch.equal(scores, pscores) and torch.allclose(factors, pfactors)
    assert rel_err(pfactors.cpu(), ops.obs_factors_ref(w, finv, p)) < RTOL[torch.float32]
    new = chosen_mask(scores, p)
    dense_out, packed_out = w.clone(), w.clone()
    ops.obs_update(dense_out, f32, new, p, "obs", factors=factors, backend=backend.name)
    ops.obs_update(packed_out, packed, new, p, "obs", factors=pfactors, backend=backend.name)
    assert torch.allclose(dense_out, packed_out, atol=1e-6)
    assert rel_err(packed_out.cpu(), ops.obs_update_ref(w, finv, new.cpu(), p, "obs")) < 10 * RTOL[torch.float32]


def test_update_from_factors_does_not_solve(seed, monkeypatch):
    """The torch backend's update from factors factorises nothing: with every torch solver
    stubbed out it still runs, and without factors the stub is hit (the patch is live)."""
    p, d, finv, w = problem("2:4")
    finv = finv.float()
    scores, factors = ops.obs_scores(w, finv, p, return_factors=True, backend="torch")
    new = chosen_mask(scores, p)

    def no_solve(*_a, **_k):
        raise AssertionError("the update solved a group it had factors for")

    for name in ("cholesky_ex", "cholesky", "solve", "solve_ex", "inv", "inv_ex", "solve_triangular"):
        monkeypatch.setattr(torch.linalg, name, no_solve)
    monkeypatch.setattr(torch, "cholesky_solve", no_solve)
    ops.obs_update(w.clone(), finv, new, p, "obs", factors=factors, backend="torch")
    with pytest.raises(AssertionError, match="solved"):  # without factors it does solve
        ops.obs_update(w.clone(), finv, new, p, "obs", backend="torch")


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
