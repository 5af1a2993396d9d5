"""Sequential OBS (SPEC §2d) in Triton: one program per Fisher block, the block resident in registers.

The program loads its block of F⁻¹ once as a P×P tile (P = next power of two ≥ B, B ≤ 128),
conditions it on the already-pruned weights that it still couples, then runs the greedy loop
for its U steps without touching F⁻¹ in memory again: per step the scores of every candidate,
an argmin (ties to the lowest unit, as the torch backend), one store of the unit and the
cumulative loss, and the removal as rank-1 downdates of the tile and of w in registers:

    c = H[q, :] (= H[:, q]),  p = c_q;   w ← w − c·w_q/p;   H ← H − c cᵀ/p

- unstructured / N:M (one weight per step): ρ = w²/(2 diag H) on the candidates; for N:M a
  weight is a candidate while its group has lost fewer than N (a P×P masked count, no gather).
- block4: each group's 4×4 diagonal block is read out of the tile as (P/4, 4, P/4, 4) with the
  two group axes equal, solved by a 4-step Gauss–Jordan restricted to the live members (dead
  members: identity, w = 0), ρ = ½ wᵀx; the chosen group leaves one member at a time.

Extractions reduce over rows (axis 0), which the one-column-per-thread layout keeps inside a
thread (see update_triton.py). A block that meets a pivot ≤ 0 (F⁻¹ not positive definite in
float32) is flagged and redone by the launcher on the torch backend.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...blocks import unit_size, units_per_block
from ...patterns import Pattern
from ..torch.sequential import sequential_order_torch
from .util import column_warps, next_pow2

__all__ = ["sequential_order_triton"]


@triton.jit
def _eliminate(H, w, idx, s):
    """Remove coordinate s from the tile H (P, P) and w (P,); returns (H, w, pivot ≤ 0 flag)."""
    c = tl.sum(tl.where(idx[:, None] == s, H, 0.0), axis=0)  # row s = column s
    p = tl.sum(tl.where(idx == s, c, 0.0), axis=0)
    good = p > 0.0
    cs = c * tl.where(good, 1.0 / tl.where(good, p, 1.0), 0.0)
    ws = tl.sum(tl.where(idx == s, w, 0.0), axis=0)
    return H - c[:, None] * cs[None, :], w - cs * ws, (~good).to(tl.int32)


@triton.jit
def _group_rho(H, w, alive, NG: tl.constexpr, G: tl.constexpr):
    """ρ of every group of G (NG,): ½ w_Qᵀ (H_QQ)⁻¹ w_Q on live members; +inf for dead groups."""
    H4 = tl.reshape(H, (NG, G, NG, G))
    ga = tl.arange(0, NG)
    same = ga[:, None, None, None] == ga[None, None, :, None]
    a = tl.sum(tl.where(same, H4, 0.0), axis=2)  # (NG, G, G): the diagonal sub-blocks
    live = tl.reshape(alive, (NG, G)) != 0
    t = tl.arange(0, G)
    eye = (t[:, None] == t[None, :]).to(tl.float32)
    a = tl.where(live[:, :, None] & live[:, None, :], a, eye[None, :, :])
    wg = tl.where(live, tl.reshape(w, (NG, G)), 0.0)
    x = wg
    for s in tl.static_range(G):  # Gauss–Jordan: a → I, x → a⁻¹ w (as update_triton's grouped kernel)
        on = t == s
        row = tl.sum(tl.where(on[None, :, None], a, 0.0), axis=1)
        col = tl.sum(tl.where(on[None, None, :], a, 0.0), axis=2)
        piv = tl.sum(tl.where(on[None, :], row, 0.0), axis=1)
        piv = tl.where(piv > 0.0, piv, 1.0)
        xs = tl.sum(tl.where(on[None, :], x, 0.0), axis=1)
        mult = col / piv[:, None]
        x = tl.where(on[None, :], (xs / piv)[:, None], x - mult * xs[:, None])
        a = tl.where(on[None, :, None], (row / piv[:, None])[:, None, :], a - mult[:, :, None] * row[:, None, :])
    rho = 0.5 * tl.sum(wg * x, axis=1)
    return tl.where(tl.max(live.to(tl.int32), axis=1) > 0, rho, float("inf"))


@triton.jit
def _single_rho(H, w, alive_i, idx, M: tl.constexpr, N: tl.constexpr, B):
    """ρ = w²/(2 H_qq) on the candidates (P,), +inf elsewhere; N > 0: N:M's lost-fewer-than-N rule."""
    diag = tl.sum(tl.where(idx[:, None] == idx[None, :], H, 0.0), axis=0)
    cand = alive_i != 0
    if N > 0:
        lost = ((alive_i == 0) & (idx < B)).to(tl.int32)
        count = tl.sum(tl.where((idx[:, None] // M) == (idx[None, :] // M), lost[:, None], 0), axis=0)
        cand = cand & (count < N)
    return tl.where(cand, 0.5 * w * w / tl.maximum(diag, 1.1754944e-38), float("inf"))


@triton.jit
def sequential_kernel(w_ptr, pruned_ptr, finv_ptr, order_ptr, cum_ptr, status_ptr, d, B, U, s_fb, s_fr, s_fc,
                       G: tl.constexpr, M: tl.constexpr, N: tl.constexpr, P: tl.constexpr, NG: tl.constexpr):
    blk = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, P)
    pos = blk * B + idx
    ok = (idx < B) & (pos < d)
    H = tl.load(finv_ptr + blk * s_fb + idx[:, None] * s_fr + idx[None, :] * s_fc,
                mask=ok[:, None] & ok[None, :], other=0.0).to(tl.float32)
    dead = (tl.load(pruned_ptr + pos, mask=ok, other=0) != 0) & ok
    w = tl.where(dead, 0.0, tl.load(w_ptr + pos, mask=ok, other=0.0).to(tl.float32))
    alive_i = (ok & ~dead).to(tl.int32)
    dead_i = dead.to(tl.int32)
    bad = tl.program_id(0) * 0
    for s in range(B):  # condition on already-pruned weights that H still couples (SPEC §2d)
        if tl.sum(tl.where(idx == s, dead_i, 0), axis=0) > 0:
            off = tl.sum(tl.where((idx[:, None] == s) & (idx[None, :] != s), tl.abs(H), 0.0))
            if off > 0.0:
                H, w, flag = _eliminate(H, w, idx, s)
                bad = bad | flag
    total = tl.sum(tl.zeros((P,), dtype=tl.float32), axis=0)
    for k in range(U):
        if G == 1:
            rho = _single_rho(H, w, alive_i, idx, M, N, B)
        else:
            rho = _group_rho(H, w, alive_i, NG, G)
        best = tl.min(rho, axis=0)
        unit = tl.argmin(rho, axis=0)  # ties to the lowest index
        if best < float("inf"):
            total += best
            tl.store(order_ptr + blk * U + k, unit.to(tl.int64))
            tl.store(cum_ptr + blk * U + k, total)
            for t in tl.static_range(G):  # a group leaves one member at a time
                q = unit * G + t
                if tl.sum(tl.where(idx == q, alive_i, 0), axis=0) > 0:
                    H, w, flag = _eliminate(H, w, idx, q)
                    bad = bad | flag
                    alive_i = tl.where(idx == q, 0, alive_i)
    tl.store(status_ptr + blk, bad)


def sequential_order_triton(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None):
    """Greedy order and cumulative losses (ops/sequential.py), computed in float32.

    weight: any shape, d elements, float16/bfloat16/float32/float64; finv: (num_blocks, B, B)
    float32, B ≤ 128, any strides, read only; pruned: bool, d elements, or None.
    Returns (order (num_blocks, U) int64, cumloss (num_blocks, U) float32).
    """
    nb, B = finv.shape[0], finv.shape[1]
    d, U, G = weight.numel(), units_per_block(pattern, B), unit_size(pattern)
    w = weight.detach().reshape(-1).contiguous()
    mask = (torch.zeros(d, dtype=torch.bool, device=finv.device) if pruned is None else pruned.reshape(-1).contiguous())
    order = torch.full((nb, U), -1, dtype=torch.int64, device=finv.device)
    cum = torch.full((nb, U), float("inf"), dtype=torch.float32, device=finv.device)
    status = torch.zeros(nb, dtype=torch.int32, device=finv.device)
    P = next_pow2(B)
    M, N = (pattern.group_size, pattern.n_prune) if pattern.is_nm else (1, 0)
    sequential_kernel[(nb,)](w, mask.view(torch.uint8), finv, order, cum, status, d, B, U, *finv.stride(),
                              G=G, M=M, N=N, P=P, NG=P // G, num_warps=column_warps(P))
    failed = torch.nonzero(status).flatten()
    for b in failed.tolist():  # not positive definite in float32 (rare): the torch backend's rules
        lo, hi = b * B, min(b * B + B, d)
        order[b : b + 1], cum[b : b + 1] = sequential_order_torch(w[lo:hi].float(), finv[b : b + 1], pattern, mask[lo:hi])
    return order, cum


# Every jit kernel of this file (the interpreter check and the static report walk them).
KERNELS = (sequential_kernel,)
