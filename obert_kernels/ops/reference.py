"""The float64 oracles every backend is held to (SPEC §4): plain loops and explicit inverses.

Slow on purpose: one block or group at a time, everything in float64 on the CPU, so each
formula of SPEC §2 can be read off the code.
"""
from __future__ import annotations

import torch

from .blocks import factor_shape, padded_blocks
from .patterns import Pattern

__all__ = ["fisher_inverse_ref", "obs_scores_ref", "obs_factors_ref", "obs_update_ref"]


def fisher_inverse_ref(grads: torch.Tensor, block_size: int, damp: float, num_grads: int | None = None) -> torch.Tensor:
    """The float64 oracle of SPEC §4: F built explicitly per block and inverted.

    grads: (m, d) all gradients; returns (ceil(d/B), B, B) float64 on the CPU.
    num_grads defaults to m (the 1/m normalisation).
    """
    g = grads.detach().to("cpu", torch.float64)
    m = g.shape[0] if num_grads is None else num_grads
    num_blocks = -(-g.shape[1] // block_size)
    blocks = padded_blocks(g, num_blocks, block_size).permute(1, 0, 2)  # (nb, m, B)
    fisher = blocks.transpose(1, 2) @ blocks / m
    fisher += damp * torch.eye(block_size, dtype=torch.float64)
    return torch.linalg.inv(fisher)


def obs_scores_ref(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 oracle: the formulas of SPEC §2b, one group at a time with explicit inverses."""
    f = finv.detach().to("cpu", torch.float64)
    B = f.shape[1]
    w = weight.detach().reshape(-1).to("cpu", torch.float64)
    p = torch.zeros(w.numel(), dtype=torch.bool) if pruned is None else pruned.reshape(-1).cpu()
    g = pattern.group_size
    ng = w.numel() // g

    def fblock(idx):  # [F⁻¹]_QQ for global indices idx inside one Fisher block
        b = idx[0] // B
        local = [i - b * B for i in idx]
        return f[b][local][:, local]

    if not pattern.is_nm:
        out = torch.empty(ng, dtype=torch.float64)
        for q in range(ng):
            idx = list(range(q * g, q * g + g))
            wq = w[idx]
            out[q] = float("-inf") if bool(p[idx].all()) else 0.5 * wq @ torch.linalg.inv(fblock(idx)) @ wq
        return out
    out = torch.empty(ng, len(pattern.subsets), dtype=torch.float64)
    for q in range(ng):
        members = set(i for i in range(g) if p[q * g + i])
        for c, subset in enumerate(pattern.subsets):
            idx = [q * g + i for i in subset]
            if len(members) >= pattern.n_prune:
                out[q, c] = float("-inf") if set(subset) <= members else float("inf")
            elif not members <= set(subset):
                out[q, c] = float("inf")
            else:
                out[q, c] = 0.5 * w[idx] @ torch.linalg.inv(fblock(idx)) @ w[idx]
    return out


def obs_factors_ref(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Float64 oracle of the factors (module docstring): ([F⁻¹]_SS)⁻¹ w_S by explicit inverses."""
    f = finv.detach().to("cpu", torch.float64)
    B = f.shape[1]
    w = weight.detach().reshape(-1).to("cpu", torch.float64)
    g = pattern.group_size
    candidates = pattern.subsets if pattern.is_nm else (tuple(range(g)),)
    out = torch.empty(w.numel() // g, len(candidates), len(candidates[0]), dtype=torch.float64)
    for q in range(out.shape[0]):
        for c, members in enumerate(candidates):
            idx = [q * g + i for i in members]
            b = idx[0] // B
            local = [i - b * B for i in idx]
            out[q, c] = torch.linalg.inv(f[b][local][:, local]) @ w[idx]
    return out.reshape(factor_shape(pattern, w.numel()))


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
