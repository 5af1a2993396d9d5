"""OBS weight update and scatter (SPEC §2c) in Triton, fused with zeroing the pruned weights.

One program per Fisher block; a block with nothing newly pruned returns before reading
its F⁻¹ (so "one pass over F⁻¹" is at most one, and none for untouched blocks). Every
kernel writes w ← w + δw and w_P ← 0 in the weight's own dtype, in place.

- "obs", unstructured: v_q = w_q / [F⁻¹]_qq on P, δw = −F⁻¹ v (one P×P tile, one matvec).
- "obs", groups (block4, N:M): the (B/M, M, M) diagonal sub-blocks are solved in registers
  by an M-step Gauss–Jordan restricted to each group's newly pruned members,
  v_Q = ([F⁻¹]_QQ)⁻¹ w_Q, and δw = −F⁻¹ v with F⁻¹'s rows read as (B/M, M, P): no layout change.
  This recomputes the solve that scoring did for the chosen subset: O(B·M²) flops per
  block from values the update reads anyway (see scores_triton.py for why they are not kept).
- "joint": a symmetric sweep of the whole block over the pivots in P (for pivot s:
  c = f[:, s], f ← f − c cᵀ/c_s, f[s, :] = f[:, s] = c/c_s, f[s, s] = −1/c_s) turns the
  columns P of F⁻¹ into F⁻¹[:, P]([F⁻¹]_PP)⁻¹ in place, so δw_Q = −that · w_P for the
  kept rows Q: |P| sweeps of B² each, no second copy of the block. The sweep keeps f
  symmetric, so each pivot needs one extraction, along rows (in-thread, see util.py).
- "none": zero P only.
- ``obs_apply`` (factors from scoring, ops/update.py): v is given, so every pattern takes the
  unstructured kernel's one P×P tile and one matvec, with v loaded instead of w_q/[F⁻¹]_qq.

A block whose elimination meets a pivot ≤ 0 (F⁻¹ not positive definite in fp32) is not
written; the launcher redoes it with the torch backend, which falls back to a general solve.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...patterns import Pattern
from ...blocks import padded_blocks
from .util import column_warps, next_pow2
from ..torch.update import obs_update_torch
from .woodbury import symmetric_sweep

__all__ = ["obs_update_triton", "obs_apply_triton"]

ZERO_TILE = 1024


@triton.jit
def update_none_kernel(w_ptr, mask_ptr, d, TILE: tl.constexpr):
    q = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    ok = q < d
    pruned = tl.load(mask_ptr + q, mask=ok, other=0) != 0
    tl.store(w_ptr + q, tl.zeros((TILE,), dtype=w_ptr.dtype.element_ty), mask=ok & pruned)


@triton.jit
def _block_lanes(mask_ptr, d, B, P: tl.constexpr):
    """This program's Fisher block (one per program): its index, its P lanes, their flat
    weight positions, which lanes hold weights (not padding, not past d), and which are newly pruned."""
    blk = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, P)
    pos = blk * B + idx
    ok = (idx < B) & (pos < d)
    pruned = tl.load(mask_ptr + pos, mask=ok, other=0) != 0
    return blk, idx, pos, ok, pruned


@triton.jit
def update_obs_kernel(w_ptr, finv_ptr, mask_ptr, v_ptr, d, B, s_fb, s_fr, s_fc, HAS_V: tl.constexpr, P: tl.constexpr):
    blk, idx, pos, ok, pruned = _block_lanes(mask_ptr, d, B, P)
    if tl.max(pruned.to(tl.int32), axis=0) > 0:
        w = tl.load(w_ptr + pos, mask=ok, other=0.0).to(tl.float32)
        if HAS_V:  # the direction from scoring's factors
            v = tl.where(pruned, tl.load(v_ptr + pos, mask=ok, other=0.0).to(tl.float32), 0.0)
        else:
            diag = tl.load(finv_ptr + blk * s_fb + idx * (s_fr + s_fc), mask=ok, other=1.0)
            v = tl.where(pruned, w / diag, 0.0)
        f = tl.load(finv_ptr + blk * s_fb + idx[:, None] * s_fr + idx[None, :] * s_fc,
                    mask=ok[:, None] & ok[None, :], other=0.0)
        delta = tl.sum(f * v[:, None], axis=0)  # F⁻¹ symmetric: reduce over rows, inside each thread
        out = tl.where(pruned, 0.0, w - delta)
        tl.store(w_ptr + pos, out.to(w_ptr.dtype.element_ty), mask=ok)


@triton.jit
def update_obs_grouped_kernel(w_ptr, finv_ptr, mask_ptr, status_ptr, d, B, s_fb, s_fr, s_fc,
                               M: tl.constexpr, P: tl.constexpr, NGP: tl.constexpr, MP: tl.constexpr):
    blk, idx, pos, ok, pruned = _block_lanes(mask_ptr, d, B, P)
    if tl.max(pruned.to(tl.int32), axis=0) > 0:
        t = tl.arange(0, MP)
        col = tl.arange(0, NGP)[:, None] * M + t[None, :]  # (NGP, MP): in-block index of member t of group gi
        col_ok = (t[None, :] < M) & (col < B) & (blk * B + col < d)
        w_g = tl.load(w_ptr + blk * B + col, mask=col_ok, other=0.0).to(tl.float32)
        p_g = tl.load(mask_ptr + blk * B + col, mask=col_ok, other=0) != 0
        base = finv_ptr + blk * s_fb
        a = tl.load(base + col[:, :, None] * s_fr + col[:, None, :] * s_fc,
                    mask=col_ok[:, :, None] & col_ok[:, None, :], other=0.0)  # (NGP, MP, MP) diagonal sub-blocks
        eye = (t[:, None] == t[None, :]).to(tl.float32)
        a = tl.where(p_g[:, :, None] & p_g[:, None, :], a, eye[None, :, :])  # identity outside Q ∩ P
        x = tl.where(p_g, w_g, 0.0)
        bad = tl.program_id(0) * 0
        for s in tl.static_range(M):  # Gauss–Jordan: a → I, x → a⁻¹ x
            on = t == s
            row = tl.sum(tl.where(on[None, :, None], a, 0.0), axis=1)  # (NGP, MP) = a[:, s, :]
            col_s = tl.sum(tl.where(on[None, None, :], a, 0.0), axis=2)  # (NGP, MP) = a[:, :, s]
            piv = tl.sum(tl.where(on[None, :], row, 0.0), axis=1)  # (NGP,)
            bad = bad | (tl.sum((~(piv > 0.0)).to(tl.int32), axis=0) > 0).to(tl.int32)
            xs = tl.sum(tl.where(on[None, :], x, 0.0), axis=1)
            mult = col_s / piv[:, None]
            x = tl.where(on[None, :], (xs / piv)[:, None], x - mult * xs[:, None])
            a = tl.where(on[None, :, None], (row / piv[:, None])[:, None, :], a - mult[:, :, None] * row[:, None, :])
        f = tl.load(base + col[:, :, None] * s_fr + idx[None, None, :] * s_fc,
                    mask=col_ok[:, :, None] & ok[None, None, :], other=0.0)  # (NGP, MP, P): F⁻¹[gi·M + t, :]
        delta = tl.sum(tl.sum(f * x[:, :, None], axis=0), axis=0)  # F⁻¹ symmetric: (F⁻¹ v)_i over rows
        w = tl.load(w_ptr + pos, mask=ok, other=0.0).to(tl.float32)
        out = tl.where(pruned, 0.0, w - delta)
        good = (idx * 0 + bad) == 0
        tl.store(w_ptr + pos, out.to(w_ptr.dtype.element_ty), mask=ok & good)
        tl.store(status_ptr + blk, bad)


@triton.jit
def update_joint_kernel(w_ptr, finv_ptr, mask_ptr, status_ptr, d, B, s_fb, s_fr, s_fc, P: tl.constexpr):
    blk, idx, pos, ok, pruned = _block_lanes(mask_ptr, d, B, P)
    pruned_i = pruned.to(tl.int32)
    if tl.max(pruned_i, axis=0) > 0:
        f = tl.load(finv_ptr + blk * s_fb + idx[:, None] * s_fr + idx[None, :] * s_fc,
                    mask=ok[:, None] & ok[None, :], other=0.0)
        bad = tl.program_id(0) * 0
        for s in range(B):
            if tl.sum(tl.where(idx == s, pruned_i, 0), axis=0) > 0:  # sweep pivot s (see module doc)
                c = tl.sum(tl.where((idx == s)[:, None], f, 0.0), axis=0)  # f[s, :] = f[:, s]
                piv = tl.sum(tl.where(idx == s, c, 0.0), axis=0)
                bad = bad | (~(piv > 0.0)).to(tl.int32)
                f = symmetric_sweep(f, c, piv, idx, s)
        # now f[Q, P] = F⁻¹[Q, P]([F⁻¹]_PP)⁻¹, so δw_Q = −f[Q, P] w_P
        w = tl.load(w_ptr + pos, mask=ok, other=0.0).to(tl.float32)
        delta = tl.sum(f * tl.where(pruned, w, 0.0)[:, None], axis=0)  # f stays symmetric: reduce over rows
        out = tl.where(pruned, 0.0, w - delta)
        good = (idx * 0 + bad) == 0
        tl.store(w_ptr + pos, out.to(w_ptr.dtype.element_ty), mask=ok & good)
        tl.store(status_ptr + blk, bad)


def _redo_with_torch(work: torch.Tensor, finv: torch.Tensor, mask: torch.Tensor, failed: torch.Tensor,
                     pattern: Pattern, update: str) -> None:
    """Run the torch backend on the blocks ``failed`` of the flat weights ``work`` (in place)."""
    nb, B = finv.shape[0], finv.shape[1]
    d = work.numel()
    w_blocks = padded_blocks(work, nb, B)[failed].reshape(-1)
    p_blocks = padded_blocks(mask, nb, B)[failed].reshape(-1)
    obs_update_torch(w_blocks, finv[failed], p_blocks, pattern, update)
    pos = (failed[:, None] * B + torch.arange(B, device=work.device)).reshape(-1)
    inside = pos < d
    work[pos[inside]] = w_blocks[inside]


def _work_copy(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The flat tensor the kernels write: weight itself when contiguous and not tracked by
    autograd (a raw write would not bump its version counter), else a copy (in_place False)."""
    in_place = weight.is_contiguous() and not weight.requires_grad
    return (weight.detach().reshape(-1) if in_place else weight.detach().reshape(-1).clone()), in_place


def _write_back(weight: torch.Tensor, work: torch.Tensor, in_place: bool) -> torch.Tensor:
    if not in_place:
        with torch.no_grad():
            weight.copy_(work.view(weight.shape))
    return weight


def obs_update_triton(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: Pattern, update: str) -> torch.Tensor:
    """Apply the update for newly pruned weights and zero them, in place on ``weight``.

    weight: any shape, d elements, any float dtype (computed in float32, stored back in
    its dtype); finv: (ceil(d/B), B, B) float32 (any strides); prune_mask: bool, d elements.
    """
    nb, B = finv.shape[0], finv.shape[1]
    d = weight.numel()
    work, in_place = _work_copy(weight)
    mask = prune_mask.detach().reshape(-1)
    mask_u8 = mask.view(torch.uint8)
    if update == "none":
        update_none_kernel[(triton.cdiv(d, ZERO_TILE),)](work, mask_u8, d, TILE=ZERO_TILE, num_warps=4)
    else:
        P = next_pow2(B)
        status = torch.zeros(nb, dtype=torch.int32, device=finv.device)
        warps = column_warps(P)
        if update == "joint":
            update_joint_kernel[(nb,)](work, finv, mask_u8, status, d, B, *finv.stride(), P=P, num_warps=warps)
        elif pattern.group_size == 1:
            update_obs_kernel[(nb,)](work, finv, mask_u8, work, d, B, *finv.stride(), HAS_V=False, P=P, num_warps=warps)
        else:
            g = pattern.group_size
            NGP, MP = next_pow2(-(-B // g)), next_pow2(g)
            update_obs_grouped_kernel[(nb,)](work, finv, mask_u8, status, d, B, *finv.stride(),
                                              M=g, P=P, NGP=NGP, MP=MP, num_warps=warps)
        failed = torch.nonzero(status).flatten()
        if failed.numel():
            _redo_with_torch(work, finv, mask, failed, pattern, update)
    return _write_back(weight, work, in_place)


def obs_apply_triton(weight: torch.Tensor, finv: torch.Tensor, direction: torch.Tensor, prune_mask: torch.Tensor) -> torch.Tensor:
    """w ← w − F⁻¹ v, w_P ← 0, in place on ``weight`` (as ``obs_apply_torch``).

    weight: any shape, d elements, any float dtype; finv: (ceil(d/B), B, B) float32 (any
    strides); direction: v, d elements, any float dtype; prune_mask: bool, d elements.
    """
    nb, B = finv.shape[0], finv.shape[1]
    work, in_place = _work_copy(weight)
    v = direction.detach().reshape(-1).contiguous()
    mask_u8 = prune_mask.detach().reshape(-1).view(torch.uint8)
    P = next_pow2(B)
    update_obs_kernel[(nb,)](work, finv, mask_u8, v, weight.numel(), B, *finv.stride(), HAS_V=True, P=P,
                              num_warps=column_warps(P))
    return _write_back(weight, work, in_place)


# Every jit kernel of this file (the interpreter check and the static report walk them).
KERNELS = (update_none_kernel, update_obs_kernel, update_obs_grouped_kernel, update_joint_kernel)
