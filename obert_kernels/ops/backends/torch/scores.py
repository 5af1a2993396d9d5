"""Block-OBS saliency scoring (SPEC §2b): torch backend and float64 oracle.

Scores are the loss increase of removing a weight or group, with F⁻¹ from §2a:
- unstructured: (d,)            ρ_q = w_q² / (2 [F⁻¹]_qq)
- block4:       (d/4,)          ρ_Q = ½ w_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q
- N:M:          (d/M, C(M, N))  ρ_S for every N-subset S of each group, in
                                Pattern.subsets order; selection takes the argmin.
Already-pruned weights/groups score −∞; for N:M a subset that would un-prune a pruned
weight scores +∞, and a group with ≥ N pruned weights scores −∞ on the subsets inside
its pruned set, so nothing pruned is ever revived.

Factors (``return_factors=True``): every candidate's solve v_S = ([F⁻¹]_SS)⁻¹ w_S, which
scoring computes anyway (ρ_S = ½ w_Sᵀ v_S) and the "obs" update needs for the candidates
that selection takes (SPEC §2c), so the update does no solve of its own:
- unstructured: (d,)            v_q = w_q / [F⁻¹]_qq
- block4:       (d/4, 4)        v_Q, members in order
- N:M:          (d/M, C(M,N), N) v_S for every subset, members in Pattern.subsets order.
They are computed from the weights as given, whatever the ±∞ rules say of the score.
"""
from __future__ import annotations

import torch

from ...patterns import Pattern
from ...blocks import check_groups, group_diag_blocks, nm_subset_masks, padded_blocks

__all__ = ["obs_scores_torch", "quad_inverse"]


def quad_inverse(a: torch.Tensor, w: torch.Tensor, want_solution: bool = False):
    """½ wᵀ A⁻¹ w for batches of SPD A (…, n, n) and w (…, n); with want_solution, also A⁻¹ w (…, n)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if bool(info.any()):  # not SPD in this precision: a general solve still gives the quadratic form
        v = torch.linalg.solve(a, w)
        quad = 0.5 * (w * v).sum(-1)
        return (quad, v) if want_solution else quad
    y = torch.linalg.solve_triangular(chol, w.unsqueeze(-1), upper=False).squeeze(-1)
    quad = 0.5 * (y * y).sum(-1)
    if not want_solution:
        return quad
    return quad, torch.cholesky_solve(w.unsqueeze(-1), chol).squeeze(-1)


def _nm_constrain(scores: torch.Tensor, pruned_groups: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Apply the already-pruned rules to (ng, C) N:M subset scores."""
    subset = nm_subset_masks(pattern, scores.device)  # (C, M)
    pruned = pruned_groups.unsqueeze(1)  # (ng, 1, M)
    covers_pruned = ~(pruned & ~subset).any(-1)  # subset contains every pruned weight
    inside_pruned = ~(subset & ~pruned).any(-1)  # every subset member is already pruned
    saturated = (pruned_groups.sum(-1) >= pattern.n_prune).unsqueeze(1)
    inf = torch.tensor(float("inf"), dtype=scores.dtype, device=scores.device)
    allowed = torch.where(covers_pruned, scores, inf)
    return torch.where(saturated, torch.where(inside_pruned, -inf, inf), allowed)


def obs_scores_torch(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None,
                     return_factors: bool = False):
    """Saliency scores of one tensor (see module docstring for shapes).

    weight: any shape, d elements, any float dtype; finv: (ceil(d/B), B, B) float32/64;
    pruned: bool, d elements, True where already pruned. Returns scores in finv.dtype,
    or (scores, factors) with return_factors.
    """
    nb, B = finv.shape[0], finv.shape[1]
    d = weight.numel()
    w = padded_blocks(weight.detach().reshape(-1).to(finv.dtype), nb, B).reshape(-1)
    pruned_flat = None if pruned is None else pruned.reshape(-1)
    if pattern.group_size == 1:
        diag = finv.diagonal(dim1=1, dim2=2).reshape(-1)
        scores = (w * w / (2 * diag))[:d]
        if pruned_flat is not None:
            scores = scores.masked_fill(pruned_flat, float("-inf"))
        return (scores, (w / diag)[:d]) if return_factors else scores
    g = pattern.group_size
    ng = check_groups(d, pattern)
    blocks = group_diag_blocks(finv, g)[:ng]  # (ng, g, g)
    wg = w[: ng * g].reshape(ng, g)
    if not pattern.is_nm:
        scores, factors = quad_inverse(blocks, wg, want_solution=True) if return_factors else (quad_inverse(blocks, wg), None)
        if pruned_flat is not None:
            scores = scores.masked_fill(pruned_flat.reshape(ng, g).all(-1), float("-inf"))
        return (scores, factors) if return_factors else scores
    per_subset, per_subset_factors = [], []
    for subset in pattern.subsets:
        idx = torch.tensor(subset, device=finv.device)
        sub = blocks.index_select(1, idx).index_select(2, idx)
        solved = quad_inverse(sub, wg.index_select(1, idx), want_solution=return_factors)
        per_subset.append(solved[0] if return_factors else solved)
        if return_factors:
            per_subset_factors.append(solved[1])
    scores = torch.stack(per_subset, dim=1)  # (ng, C)
    if pruned_flat is not None:
        scores = _nm_constrain(scores, pruned_flat.reshape(ng, g), pattern)
    return (scores, torch.stack(per_subset_factors, dim=1)) if return_factors else scores


