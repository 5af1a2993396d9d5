"""The float64 oracles every backend is held to (SPEC §4): plain loops and explicit inverses.

Slow on purpose: one block or group at a time, everything in float64 on the CPU, so each
formula of SPEC §2 can be read off the code.
"""
from __future__ import annotations

import torch

from .blocks import factor_shape, padded_blocks, unit_size, units_per_block
from .patterns import Pattern

__all__ = ["fisher_inverse_ref", "obs_scores_ref", "obs_factors_ref", "obs_update_ref", "sequential_order_ref",
           "spec_fisher_tolerance", "FISHER_ERROR_FLOOR"]

# SPEC §4's "about twice the per-gradient update's error", as a bound: 2 × that error plus this
# floor (relative error of F⁻¹, float32). It was 1e-6: the torch rank-k Woodbury kernel exceeded
# that bound on 6 of 2,001 seeds of `check --quick`'s case (d = 46, B = 13, m = 24, k = 7; its
# error over the naive one: median 0.87, 99th percentile 2.7, largest 8.0; the excess over twice
# the naive error at most 1.8e-6), a flaky test one CI run in a few hundred; the direct build
# stayed below 2 × naive on every seed (torch and cpp). 3e-6 is ~25 float32 ulps; a wrong kernel
# errs by orders of magnitude more (the check's 1% fault: 1e-2).
FISHER_ERROR_FLOOR = 3e-6


def spec_fisher_tolerance(naive_err: float) -> float:
    """The largest relative error of a float32 F⁻¹ against the float64 reference that SPEC §4 allows,
    given the plain per-gradient float32 update's error on the same gradients."""
    return 2.0 * naive_err + FISHER_ERROR_FLOOR


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


# ---- sequential OBS (SPEC §2d; ops/backends/torch/sequential.py has the semantics) ----
def _ref_candidates(alive: torch.Tensor, pattern: Pattern, removed_in_group: list[int]) -> list[list[int]]:
    """Live members of each unit (empty when it is not a candidate)."""
    g, out = unit_size(pattern), []
    for u in range(alive.numel() // g):
        members = [i for i in range(u * g, u * g + g) if alive[i]]
        if pattern.is_nm and removed_in_group[u // pattern.group_size] >= pattern.n_prune:
            members = []
        out.append(members)
    return out


def _ref_block(H: torch.Tensor, w: torch.Tensor, alive: torch.Tensor, pattern: Pattern, U: int):
    """Greedy order and cumulative losses of one block (H, w: the valid part, float64)."""
    order = torch.full((U,), -1, dtype=torch.long)
    cum = torch.full((U,), float("inf"), dtype=torch.float64)
    M = pattern.group_size
    removed = [int((~alive[a * M : a * M + M]).sum()) for a in range(-(-alive.numel() // M))] if pattern.is_nm else []
    total = 0.0
    for k in range(U):
        best, best_rho = None, None
        for u, Q in enumerate(_ref_candidates(alive, pattern, removed)):
            if Q:
                rho = float(0.5 * w[Q] @ torch.linalg.inv(H[Q][:, Q]) @ w[Q])
                if best is None or rho < best_rho:  # strict: ties go to the lowest unit
                    best, best_rho, best_Q = u, rho, Q
        if best is None:
            break
        total += best_rho
        order[k], cum[k] = best, total
        solve = torch.linalg.inv(H[best_Q][:, best_Q])
        w = w - H[:, best_Q] @ solve @ w[best_Q]
        w[best_Q] = 0.0
        H = H - H[:, best_Q] @ solve @ H[best_Q, :]
        alive[best_Q] = False
        if pattern.is_nm:
            removed[best_Q[0] // M] += 1
    return order, cum


def sequential_order_ref(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None):
    """Float64 oracle of the module docstring: (order, cumloss) as (num_blocks, U) int64 / float64.

    weight: d elements; finv: dense (num_blocks, B, B); pruned: bool, d elements, or None.
    """
    f = finv.detach().to("cpu", torch.float64)
    nb, B = f.shape[0], f.shape[1]
    U = units_per_block(pattern, B)
    w_all = weight.detach().reshape(-1).to("cpu", torch.float64)
    d = w_all.numel()
    p_all = torch.zeros(d, dtype=torch.bool) if pruned is None else pruned.reshape(-1).cpu()
    order = torch.full((nb, U), -1, dtype=torch.long)
    cum = torch.full((nb, U), float("inf"), dtype=torch.float64)
    for b in range(nb):
        lo, hi = b * B, min((b + 1) * B, d)
        n = hi - lo
        H, w = f[b, :n, :n].clone(), w_all[lo:hi].clone()
        dead = p_all[lo:hi].clone()
        w[dead] = 0.0
        P0 = torch.nonzero(dead).flatten().tolist()
        if P0:  # condition on the already-pruned weights (w_P0 = 0: w does not move)
            H = H - H[:, P0] @ torch.linalg.inv(H[P0][:, P0]) @ H[P0, :]
        alive = torch.zeros(B, dtype=torch.bool)  # padding: never alive
        alive[:n] = ~dead
        Hp, wp = torch.eye(B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64)
        Hp[:n, :n], wp[:n] = H, w
        order[b], cum[b] = _ref_block(Hp, wp, alive, pattern, U)
    return order, cum
