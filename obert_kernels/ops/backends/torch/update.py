"""OBS weight update and scatter (SPEC §2c): torch backend and float64 oracle.

For the set P of newly pruned weights of one Fisher block:
- "obs":   δw = −F⁻¹ v,  v_Q = ([F⁻¹]_QQ)⁻¹ w_Q for each aligned group Q ∩ P (single
           weights for unstructured), 0 elsewhere — the paper's summed update;
- "joint": δw = −F⁻¹[:, P] ([F⁻¹]_PP)⁻¹ w_P — exact joint OBS for the block;
- "none":  no compensation.
Then w ← w + δw and w_P ← 0 exactly.

With the factors that scoring computed (ops/scores.py), the "obs" direction v needs no
solve: ``obs_direction`` gathers v_Q for every group whose newly pruned set is one scored
candidate, and ``obs_apply_torch`` applies δw = −F⁻¹ v (the same step as without factors).
"""
from __future__ import annotations

import torch

from ...patterns import Pattern
from ...blocks import factor_shape, group_diag_blocks, nm_subset_masks, padded_blocks

__all__ = ["UPDATES", "obs_update_torch", "obs_direction", "obs_apply_torch"]

UPDATES = ("obs", "joint", "none")


def _masked_solve(a: torch.Tensor, w: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """v with v_S = (A_SS)⁻¹ w_S on the selected coordinates S and 0 elsewhere.

    a: (n, g, g) SPD, w: (n, g), sel: (n, g) bool. Rows/columns outside S are replaced
    by the identity, which leaves A_SS's inverse untouched and decouples the rest.
    """
    pair = sel.unsqueeze(2) & sel.unsqueeze(1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    a_sel = torch.where(pair, a, eye)
    w_sel = torch.where(sel, w, torch.zeros((), dtype=w.dtype, device=w.device))
    chol, info = torch.linalg.cholesky_ex(a_sel)
    if bool(info.any()):
        return torch.linalg.solve(a_sel, w_sel)
    return torch.cholesky_solve(w_sel.unsqueeze(-1), chol).squeeze(-1)


def obs_direction(factors: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern) -> torch.Tensor | None:
    """The "obs" update's v (d,) from scoring's factors, or None when they cannot give it.

    factors: as obs_scores(return_factors=True) returns them (ops/scores.py), from the same
    weights and F⁻¹; prune_mask: bool, d elements, True = newly pruned. v is 0 outside the
    mask. None when some group's newly pruned weights are not one whole scored candidate
    (part of a block4 group; an N:M group that already had pruned weights): the update then
    solves those groups itself, as without factors.
    """
    mask = prune_mask.reshape(-1)
    d, g = mask.numel(), pattern.group_size
    if tuple(factors.shape) != factor_shape(pattern, d):
        raise ValueError(f"factors have shape {tuple(factors.shape)}; obs_scores gives {factor_shape(pattern, d)} "
                         f"for {d} weights and pattern {pattern.name}")
    zero = torch.zeros((), dtype=factors.dtype, device=factors.device)
    if g == 1:
        return torch.where(mask, factors, zero)
    groups = mask.reshape(-1, g)  # (ng, g)
    newly = groups.any(-1)
    if not pattern.is_nm:
        if bool((newly & ~groups.all(-1)).any()):
            return None
        return torch.where(groups, factors, zero).reshape(-1)
    subsets = nm_subset_masks(pattern, mask.device)  # (C, M)
    match = (groups.unsqueeze(1) == subsets.unsqueeze(0)).all(-1)  # (ng, C): newly pruned set is subset c
    if bool((newly & ~match.any(-1)).any()):
        return None
    chosen = match.to(torch.int8).argmax(-1)  # (ng,)
    members = torch.tensor(pattern.subsets, device=mask.device)[chosen]  # (ng, N)
    picked = factors.gather(1, chosen.view(-1, 1, 1).expand(-1, 1, factors.shape[2])).squeeze(1)  # (ng, N)
    v = torch.zeros(groups.shape, dtype=factors.dtype, device=factors.device)
    v.scatter_(1, members, torch.where(newly.unsqueeze(1), picked, zero))
    return v.reshape(-1)


def obs_apply_torch(weight: torch.Tensor, finv: torch.Tensor, direction: torch.Tensor, prune_mask: torch.Tensor) -> torch.Tensor:
    """w ← w − F⁻¹ v per block, then w_P ← 0, in place on ``weight``.

    weight: any shape, d elements, any float dtype (computed in finv.dtype); finv:
    (ceil(d/B), B, B) float32/64; direction: v (d,), 0 outside the mask; prune_mask: bool,
    d elements, True = newly pruned (blocks without any are not read).
    """
    nb, B = finv.shape[0], finv.shape[1]
    w = padded_blocks(weight.detach().reshape(-1).to(finv.dtype), nb, B)  # (nb, B)
    p = padded_blocks(prune_mask.reshape(-1), nb, B)
    v = padded_blocks(direction.reshape(-1).to(finv.dtype), nb, B)
    _apply_direction(weight, w, finv, v, p)
    return weight


def _apply_direction(weight: torch.Tensor, w: torch.Tensor, finv: torch.Tensor, v: torch.Tensor | None, p: torch.Tensor) -> None:
    """weight ← (w − F⁻¹ v) with the pruned zeroed; w, v, p: (nb, B) padded blocks; v None: no compensation."""
    if v is not None:
        active = torch.nonzero(p.any(dim=1)).flatten()  # blocks with something to prune
        if active.numel():
            w[active] = w[active] - torch.bmm(finv[active], v[active].unsqueeze(2)).squeeze(2)
    flat = w.masked_fill(p, 0.0).reshape(-1)[: weight.numel()]
    with torch.no_grad():
        weight.copy_(flat.reshape(weight.shape).to(weight.dtype))


def obs_update_torch(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern, update: str) -> torch.Tensor:
    """Apply the update for newly pruned weights and zero them, in place on ``weight``.

    weight: any shape, d elements, any float dtype (computed in finv.dtype);
    finv: (ceil(d/B), B, B) float32/64; prune_mask: bool, d elements, True = newly pruned.
    """
    nb, B = finv.shape[0], finv.shape[1]
    w = padded_blocks(weight.detach().reshape(-1).to(finv.dtype), nb, B)  # (nb, B)
    p = padded_blocks(prune_mask.reshape(-1), nb, B)  # padding is False: never pruned
    active = torch.nonzero(p.any(dim=1)).flatten()  # only these blocks are solved
    v = None if update == "none" else torch.zeros_like(w)
    if v is not None and active.numel():
        f, wa, pa = finv[active], w[active], p[active]
        if update == "joint":
            v[active] = _masked_solve(f, wa, pa)
        elif pattern.group_size == 1:
            v[active] = torch.where(pa, wa / f.diagonal(dim1=1, dim2=2), torch.zeros((), dtype=wa.dtype, device=wa.device))
        else:
            g = pattern.group_size
            v[active] = _masked_solve(group_diag_blocks(f, g), wa.reshape(-1, g), pa.reshape(-1, g)).reshape(-1, B)
    _apply_direction(weight, w, finv, v, p)
    return weight


