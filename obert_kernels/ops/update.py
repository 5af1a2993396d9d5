"""OBS weight update and scatter (SPEC §2c): torch backend and float64 oracle.

For the set P of newly pruned weights of one Fisher block:
- "obs":   δw = −F⁻¹ v,  v_Q = ([F⁻¹]_QQ)⁻¹ w_Q for each aligned group Q ∩ P (single
           weights for unstructured), 0 elsewhere — the paper's summed update;
- "joint": δw = −F⁻¹[:, P] ([F⁻¹]_PP)⁻¹ w_P — exact joint OBS for the block;
- "none":  no compensation.
Then w ← w + δw and w_P ← 0 exactly.
"""
from __future__ import annotations

import torch

from ..patterns import Pattern
from ._checks import padded_blocks
from .scores import group_diag_blocks

__all__ = ["UPDATES", "obs_update_torch", "obs_update_ref"]

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


def obs_update_torch(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern, update: str) -> torch.Tensor:
    """Apply the update for newly pruned weights and zero them, in place on ``weight``.

    weight: any shape, d elements, any float dtype (computed in finv.dtype);
    finv: (ceil(d/B), B, B) float32/64; prune_mask: bool, d elements, True = newly pruned.
    """
    nb, B = finv.shape[0], finv.shape[1]
    d = weight.numel()
    w = padded_blocks(weight.detach().reshape(-1).to(finv.dtype), nb, B)  # (nb, B)
    p = padded_blocks(prune_mask.reshape(-1), nb, B)  # padding is False: never pruned
    active = torch.nonzero(p.any(dim=1)).flatten()  # blocks with something to prune
    if update != "none" and active.numel():
        f, wa, pa = finv[active], w[active], p[active]
        if update == "joint":
            v = _masked_solve(f, wa, pa)
        elif pattern.group_size == 1:
            v = torch.where(pa, wa / f.diagonal(dim1=1, dim2=2), torch.zeros((), dtype=wa.dtype, device=wa.device))
        else:
            g = pattern.group_size
            v = _masked_solve(group_diag_blocks(f, g), wa.reshape(-1, g), pa.reshape(-1, g)).reshape(-1, B)
        w[active] = wa - torch.bmm(f, v.unsqueeze(2)).squeeze(2)
    w = w.masked_fill(p, 0.0).reshape(-1)[:d]
    with torch.no_grad():
        weight.copy_(w.reshape(weight.shape).to(weight.dtype))
    return weight


def obs_update_ref(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern, update: str) -> torch.Tensor:
    """Float64 oracle of SPEC §2c, one Fisher block at a time; returns the new flat weights (d,)."""
    f = finv.detach().to("cpu", torch.float64)
    B = f.shape[1]
    w = weight.detach().reshape(-1).to("cpu", torch.float64).clone()
    p = prune_mask.reshape(-1).cpu()
    g = pattern.group_size
    out = w.clone()
    for b in range(f.shape[0]):
        lo, hi = b * B, min((b + 1) * B, w.numel())
        wb = torch.zeros(B, dtype=torch.float64)
        wb[: hi - lo] = w[lo:hi]
        P = [i for i in range(hi - lo) if p[lo + i]]
        if not P or update == "none":
            continue
        if update == "joint":
            delta = -f[b][:, P] @ torch.linalg.inv(f[b][P][:, P]) @ wb[P]
        else:
            v = torch.zeros(B, dtype=torch.float64)
            for start in range(0, B, g):
                Q = [i for i in range(start, start + g) if i in P]
                if Q:
                    v[Q] = torch.linalg.inv(f[b][Q][:, Q]) @ wb[Q]
            delta = -f[b] @ v
        out[lo:hi] = w[lo:hi] + delta[: hi - lo]
    out[p] = 0.0
    return out
