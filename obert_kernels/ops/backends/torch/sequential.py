"""Sequential OBS (SPEC §2d; CAP, Kuznedelev et al. 2023): each Fisher block's greedy removal order.

Within a block with H = F⁻¹ and weights w, repeat: among the live candidate units Q take the
one with the least ρ_Q = ½ w_Qᵀ (H_QQ)⁻¹ w_Q, add it to the block's cumulative loss, then

    w ← w − H[:, Q] (H_QQ)⁻¹ w_Q,   w_Q ← 0,   H ← H − H[:, Q] (H_QQ)⁻¹ H[Q, :]

Units (``unit_size``): unstructured and N:M remove one weight at a time (U = B units per
block), block4 one aligned group of 4 (U = B/4). N:M: a weight is a candidate while its
group of M has lost fewer than N (already-pruned weights count), so every group ends with
exactly N removed once the order is exhausted.

Already-pruned weights are never candidates. They count as removed before the first step:
H is conditioned on them (H ← H − H[:, P₀](H_P₀P₀)⁻¹H[P₀, :]) with their weights taken as 0,
so w does not move. When F⁻¹ already decouples them (the pruner zeroes their gradients, so
[F⁻¹]_q,· = e_q/λ) this changes nothing and is skipped. A block4 group with some members
pruned is a candidate on its live members. Padding past d in the last block is never a
candidate and plays no part (the valid sub-block's Schur complements do not read it).

Outputs, per block, in removal order (``order[b, k]`` is the unit removed at step k):
- order:   (num_blocks, U) int64, the unit's index within the block (weight, or group for
           block4); −1 once the block has no candidate left;
- cumloss: (num_blocks, U) in finv.dtype, L_b(k+1) = Σ of the first k+1 ρ's; +inf where
           order is −1. Non-decreasing (ρ ≥ 0), which selection relies on.

The block's weights after its first c removals equal the joint OBS update (ops.obs_update,
update="joint") of those units together with the already-pruned weights (weights zeroed
there first): selection replays that instead of keeping any weight snapshots.

Memory: the blocks are copied and worked on in slices of ``SLICE_BYTES``: F⁻¹ is never
written, and the extra memory is one slice plus the (num_blocks, U) outputs.
"""
from __future__ import annotations

import torch

from ...blocks import group_diag_blocks, padded_blocks, unit_size, units_per_block
from ...patterns import Pattern
from .scores import quad_inverse

__all__ = ["sequential_order_torch", "SLICE_BYTES"]

# Working set of one slice of blocks (copy of H and its temporaries): small enough to stay in
# a CPU's L2/L3 for its B steps, large enough that per-step Python overhead is amortised.
SLICE_BYTES = 4 * 2**20


def _slice_blocks(B: int, itemsize: int) -> int:
    return max(1, SLICE_BYTES // (B * B * itemsize))


def _eliminate_one(H: torch.Tensor, w: torch.Tensor, q: torch.Tensor, active: torch.Tensor):
    """Remove coordinate q[s] of every block s where active[s], in place.

    H: (S, B, B), w: (S, B), q: (S,) int64, active: (S,) bool. A pivot ≤ 0 (H not positive
    definite in this precision) removes the weight without compensation. What is left in row
    and column q (rounding residue) and in w_q is never read again: scores, pivots and the
    w update of later steps only read live coordinates, and group solves mask dead members.
    Returns (c, c·scale), (S, B) each: the diagonal's downdate is c ⊙ c·scale.
    """
    S = w.shape[0]
    rows = torch.arange(S, device=w.device)
    c = H[rows, q]  # (S, B): row q, = column q (H is symmetric); a contiguous read
    p = c[rows, q]
    ok = active & (p > 0)
    scale = torch.where(ok, 1.0 / torch.where(ok, p, torch.ones_like(p)), torch.zeros_like(p))
    cs = c * scale.unsqueeze(1)
    H.addcmul_(c.unsqueeze(2), cs.unsqueeze(1), value=-1.0)  # rank-1 downdate, one pass, no temporary
    w.addcmul_(cs, w[rows, q].unsqueeze(1), value=-1.0)
    return c, cs


def _condition_on_pruned(H: torch.Tensor, w: torch.Tensor, dead: torch.Tensor) -> None:
    """Eliminate the already-pruned coordinates that H still couples to others (w_dead = 0 first)."""
    w.masked_fill_(dead, 0.0)
    eye = torch.eye(H.shape[1], dtype=torch.bool, device=H.device)
    coupled = dead & (H.masked_fill(eye, 0.0) != 0).any(dim=2)  # decoupled ones need nothing
    for j in torch.nonzero(coupled.any(dim=0)).flatten().tolist():
        q = torch.full((H.shape[0],), j, dtype=torch.long, device=H.device)
        _eliminate_one(H, w, q, coupled[:, j])


def _group_scores(H: torch.Tensor, w: torch.Tensor, alive: torch.Tensor, g: int) -> torch.Tensor:
    """ρ of every group of g: (S, B/g), ½ w_Qᵀ (H_QQ)⁻¹ w_Q on the live members (dead members
    replaced by the identity, their w by 0); +inf where a group has no live member."""
    S, B = w.shape
    live = alive.reshape(S * B // g, g)
    eye = torch.eye(g, dtype=H.dtype, device=H.device)
    blocks = torch.where(live.unsqueeze(2) & live.unsqueeze(1), group_diag_blocks(H, g), eye)
    rho = quad_inverse(blocks, torch.where(live, w.reshape(-1, g), 0.0)).reshape(S, B // g)
    return rho.masked_fill_(~live.any(-1).reshape(S, B // g), float("inf"))


def _single_scores(w: torch.Tensor, diag: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """ρ = w²/(2 H_qq) of single weights, (S, B); +inf off the candidates. A pivot ≤ 0 (H not
    positive definite in this precision) scores huge, so it is taken last."""
    return (w * w).div_(diag.clamp_min(torch.finfo(w.dtype).tiny)).mul_(0.5).masked_fill_(~candidate, float("inf"))


def _candidates(alive: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """(S, B) bool: live weights that may go next (N:M: their group has lost fewer than N)."""
    if not pattern.is_nm:
        return alive
    S, B = alive.shape
    M = pattern.group_size
    lost = (~alive).reshape(S, B // M, M).sum(-1, keepdim=True)
    return alive & (lost < pattern.n_prune).expand(S, B // M, M).reshape(S, B)


def _greedy_slice(H, w, alive, pattern: Pattern, order, cum) -> None:
    """The greedy loop over one slice: H (S, B, B), w (S, B), alive (S, B) bool (False on padding
    and pruned), all modified; writes order/cum (S, U)."""
    g = unit_size(pattern)
    S = w.shape[0]
    rows = torch.arange(S, device=w.device)
    total = torch.zeros(S, dtype=w.dtype, device=w.device)
    diag = H.diagonal(dim1=1, dim2=2).clone() if g == 1 else None  # kept contiguous, downdated below
    for k in range(order.shape[1]):
        cand = _candidates(alive, pattern)
        rho = _single_scores(w, diag, cand) if g == 1 else _group_scores(H, w, cand, g)
        best, unit = rho.min(dim=1)  # the first minimum: ties go to the lowest unit
        active = torch.isfinite(best)
        if not bool(active.any()):
            break
        total.add_(best.masked_fill(~active, 0.0))
        order[:, k] = unit.masked_fill(~active, -1)
        cum[:, k] = total.masked_fill(~active, float("inf"))
        for t in range(g):  # a group leaves one member at a time: equal to its joint removal
            q = unit * g + t
            member = active & alive[rows, q]
            c, cs = _eliminate_one(H, w, q, member)
            if diag is not None:
                diag.addcmul_(c, cs, value=-1.0)
            alive[rows, q] = alive[rows, q] & ~member


def sequential_order_torch(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None):
    """Greedy order and cumulative losses (module docstring), computed in finv.dtype.

    weight: any shape, d elements, any float dtype; finv: (num_blocks, B, B) float32/64, read only;
    pruned: bool, d elements, or None. Returns (order (num_blocks, U) int64, cumloss (num_blocks, U) finv.dtype).
    """
    nb, B = finv.shape[0], finv.shape[1]
    d, U = weight.numel(), units_per_block(pattern, B)
    w_all = padded_blocks(weight.detach().reshape(-1).to(finv.dtype), nb, B)
    valid = padded_blocks(torch.ones(d, dtype=torch.bool, device=finv.device), nb, B)
    dead = padded_blocks(torch.zeros(d, dtype=torch.bool, device=finv.device) if pruned is None
                         else pruned.reshape(-1).to(finv.device), nb, B)
    order = torch.full((nb, U), -1, dtype=torch.long, device=finv.device)
    cum = torch.full((nb, U), float("inf"), dtype=finv.dtype, device=finv.device)
    step = _slice_blocks(B, finv.element_size())
    for a in range(0, nb, step):
        b = min(a + step, nb)
        H, w = finv[a:b].clone(), w_all[a:b].clone()
        if bool(dead[a:b].any()):
            _condition_on_pruned(H, w, dead[a:b])
        _greedy_slice(H, w, valid[a:b] & ~dead[a:b], pattern, order[a:b], cum[a:b])
    return order, cum
