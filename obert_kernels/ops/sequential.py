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

from ..patterns import Pattern
from ._checks import padded_blocks

__all__ = ["sequential_order", "unit_size", "units_per_block", "sequential_order_ref", "sequential_order_torch", "SLICE_BYTES"]

# Working set of one slice of blocks (copy of H and its temporaries): small enough to stay in
# a CPU's L2/L3 for its B steps, large enough that per-step Python overhead is amortised.
SLICE_BYTES = 4 * 2**20


def unit_size(pattern: Pattern) -> int:
    """Weights removed per greedy step: the group size for block patterns, else 1."""
    return pattern.group_size if pattern.kind == "block" else 1


def units_per_block(pattern: Pattern, B: int) -> int:
    """U, the columns of order and cumloss: B / unit_size."""
    return B // unit_size(pattern)


# ---- float64 oracle: one block at a time, explicit inverses --------------------------------
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


# ---- torch backend: batched over a slice of blocks, one vectorised step per removal ---------
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
    from .scores import _quad_inverse, group_diag_blocks

    S, B = w.shape
    live = alive.reshape(S * B // g, g)
    eye = torch.eye(g, dtype=H.dtype, device=H.device)
    blocks = torch.where(live.unsqueeze(2) & live.unsqueeze(1), group_diag_blocks(H, g), eye)
    rho = _quad_inverse(blocks, torch.where(live, w.reshape(-1, g), 0.0)).reshape(S, B // g)
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


# ---- the public op: checks, packed F⁻¹ tile by tile, dispatch -------------------------------
def sequential_order(weight: torch.Tensor, finv: torch.Tensor, pattern: "str | Pattern" = "unstructured",
                     pruned: torch.Tensor | None = None, *, backend: str = "auto"):
    """Each Fisher block's greedy removal order and cumulative losses (SPEC §2d; module docstring).

    weight: any shape with d elements (flattened row-major), any float dtype; finv:
    (ceil(d/B), B, B) float32/64, or packed (ceil(d/B), B(B+1)/2), left intact; pruned:
    optional bool with d elements, True where already pruned (never a candidate).
    Returns (order (num_blocks, U) int64, cumloss (num_blocks, U) in finv.dtype), U = B / unit_size.
    """
    from ..patterns import parse_pattern
    from . import _checks, packed
    from ._dispatch import resolve, resolve_packed

    pattern = parse_pattern(pattern)
    _, B = _checks.check_finv(finv)
    d = _checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    _checks.check_mask(pruned, weight, "pruned")
    if d % pattern.group_size:
        raise ValueError(f"pattern {pattern.name} needs the weight count ({d}) divisible by {pattern.group_size}")
    if packed.is_packed(finv):  # CUDA reads packed blocks; the others get dense tiles, one at a time
        native = resolve_packed("sequential_order", backend, weight=weight, finv=finv, pattern=pattern)
        if native:
            return native[1](weight, finv, pattern, pruned)
        w, p = weight.reshape(-1), None if pruned is None else pruned.reshape(-1)
        parts = packed.run_tiled_readonly(finv, B, lambda tile, a, b: sequential_order(
            w[a * B : b * B], tile, pattern, None if p is None else p[a * B : b * B], backend=backend))
        return torch.cat([o for o, _ in parts]), torch.cat([c for _, c in parts])
    _, fn = resolve("sequential_order", backend, weight=weight, finv=finv, pattern=pattern)
    return fn(weight, finv, pattern, pruned)
