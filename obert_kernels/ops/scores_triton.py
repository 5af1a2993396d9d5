"""Block-OBS saliency scores (SPEC §2b) in Triton; same shapes and ±∞ rules as ``obs_scores_torch``.

- unstructured: ρ_q = w_q² / (2 [F⁻¹]_qq), one lane per weight, reading only the diagonal.
- block4 and N:M: one lane per group of M weights; the group's M×M diagonal sub-block of
  F⁻¹ is loaded once into registers (a (TG, MP, MP) tile, MP = next power of two ≥ M) and
  every N-subset S is scored in the same pass: ½ w_Sᵀ ([F⁻¹]_SS)⁻¹ w_S by symmetric
  elimination (LDLᵀ without square roots) restricted to S, Σ_s y_s² / D_s. block4 is the
  one subset {0, 1, 2, 3}: a 4×4 elimination in registers.

Already-pruned weights give −∞ / +∞ exactly as in ops/scores.py.

Factors for the update: the scores are not handed to ``obs_update`` — the public API
takes a prune mask, and selection (a global threshold) decides which groups are pruned
only after every tensor is scored. Keeping the per-group solves for all C(M,N) subsets
would store up to C(M,N)·N floats per group (3× the weights for 2:4) and write them out,
while the update recomputes the one chosen subset's M×M solve from the sub-block it
reads anyway as part of F⁻¹'s block (see update_triton.py): no extra memory traffic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..patterns import Pattern
from ._triton_util import next_pow2
from .scores import _check_groups

__all__ = ["obs_scores_triton", "subset_members"]

SCORE_TILE = 1024  # weights per program, unstructured
GROUP_TILE = 64  # groups per program, block4 / N:M

_MEMBERS: dict = {}


def subset_members(pattern: Pattern, device) -> torch.Tensor:
    """(C, N) int32: the members of each scored subset (block4: one subset, all 4), cached."""
    key = (pattern, str(device))
    if key not in _MEMBERS:
        subsets = pattern.subsets if pattern.is_nm else (tuple(range(pattern.group_size)),)
        _MEMBERS[key] = torch.tensor(subsets, dtype=torch.int32, device=device).reshape(len(subsets), -1)
    return _MEMBERS[key]


@triton.jit
def _scores_unstructured_kernel(w_ptr, finv_ptr, pruned_ptr, out_ptr, d, B, s_fb, s_fd,
                                HAS_PRUNED: tl.constexpr, TILE: tl.constexpr):
    q = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    ok = q < d
    blk = q // B
    at = q - blk * B
    diag = tl.load(finv_ptr + blk * s_fb + at * s_fd, mask=ok, other=1.0)  # s_fd: diagonal step
    w = tl.load(w_ptr + q, mask=ok, other=0.0).to(tl.float32)
    score = w * w / (2.0 * diag)
    if HAS_PRUNED:
        pruned = tl.load(pruned_ptr + q, mask=ok, other=0) != 0
        score = tl.where(pruned, float("-inf"), score)
    tl.store(out_ptr + q, score, mask=ok)


@triton.jit
def _scores_grouped_kernel(w_ptr, finv_ptr, pruned_ptr, members_ptr, out_ptr, num_groups, B, num_subsets,
                           s_fb, s_fr, s_fc,
                           M: tl.constexpr, N: tl.constexpr, IS_NM: tl.constexpr, HAS_PRUNED: tl.constexpr,
                           MP: tl.constexpr, TG: tl.constexpr):
    """out[q, c] = ½ w_Sᵀ (A_SS)⁻¹ w_S for group q and subset c (members_ptr: (C, N) int32)."""
    q = tl.program_id(0).to(tl.int64) * TG + tl.arange(0, TG)
    q_ok = q < num_groups
    t = tl.arange(0, MP)
    t_ok = t < M
    first = q * M  # flat index of the group's first weight; groups never straddle blocks
    blk = first // B
    corner = blk * s_fb + (first - blk * B) * (s_fr + s_fc)  # address of F⁻¹[blk, o, o]
    sub_mask = q_ok[:, None, None] & t_ok[None, :, None] & t_ok[None, None, :]
    a_group = tl.load(finv_ptr + corner[:, None, None] + t[None, :, None] * s_fr + t[None, None, :] * s_fc,
                      mask=sub_mask, other=0.0)  # (TG, MP, MP)
    eye = t[:, None] == t[None, :]
    a_group = tl.where(sub_mask, a_group, eye[None, :, :].to(tl.float32))  # lanes past the end: identity, no 0/0
    w_mask = q_ok[:, None] & t_ok[None, :]
    w = tl.load(w_ptr + first[:, None] + t[None, :], mask=w_mask, other=0.0).to(tl.float32)
    if HAS_PRUNED:
        pruned = tl.load(pruned_ptr + first[:, None] + t[None, :], mask=w_mask, other=0) != 0
    else:
        pruned = t[None, :] < 0  # nothing pruned (a (1, MP) all-False mask)
    num_pruned = tl.sum(pruned.to(tl.int32), axis=1)
    for c in range(num_subsets):
        sel = t < 0
        for j in tl.static_range(N):
            sel = sel | (t == tl.load(members_ptr + c * N + j))
        a = tl.where(sel[None, :, None] & sel[None, None, :], a_group, eye[None, :, :].to(tl.float32))
        x = tl.where(sel[None, :], w, 0.0)
        quad = tl.zeros((TG,), dtype=tl.float32)
        for j in tl.static_range(N):
            on = t == tl.load(members_ptr + c * N + j)
            row = tl.sum(tl.where(on[None, :, None], a, 0.0), axis=1)  # (TG, MP): a[:, s, :] = a[:, :, s]
            piv = tl.sum(tl.where(on[None, :], row, 0.0), axis=1)
            xs = tl.sum(tl.where(on[None, :], x, 0.0), axis=1)
            quad += xs * xs / piv
            mult = row / piv[:, None]
            x = x - mult * xs[:, None]
            a = a - mult[:, :, None] * row[:, None, :]
        score = 0.5 * quad
        if IS_NM:
            outside = tl.sum((pruned & ~sel[None, :]).to(tl.int32), axis=1)  # pruned but not in S
            missing = tl.sum((sel[None, :] & ~pruned).to(tl.int32), axis=1)  # in S but not pruned
            score = tl.where(outside == 0, score, float("inf"))
            score = tl.where(num_pruned >= N, tl.where(missing == 0, float("-inf"), float("inf")), score)
        else:
            score = tl.where(num_pruned == M, float("-inf"), score)
        tl.store(out_ptr + q * num_subsets + c, score, mask=q_ok)


def obs_scores_triton(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None) -> torch.Tensor:
    """Saliency scores of one tensor, float32; shapes as ``obs_scores_torch``.

    weight: any shape, d elements, any float dtype; finv: (ceil(d/B), B, B) float32
    (any strides); pruned: bool, d elements, True where already pruned.
    """
    B = finv.shape[1]
    d = weight.numel()
    w = weight.detach().reshape(-1)  # contiguous: a view, or a copy of a strided weight
    has_pruned = pruned is not None
    pr = pruned.detach().reshape(-1).view(torch.uint8) if has_pruned else w  # a dummy pointer when absent
    if pattern.group_size == 1:
        out = torch.empty(d, dtype=torch.float32, device=finv.device)
        diag_step = finv.stride(1) + finv.stride(2)
        _scores_unstructured_kernel[(triton.cdiv(d, SCORE_TILE),)](
            w, finv, pr, out, d, B, finv.stride(0), diag_step, HAS_PRUNED=has_pruned, TILE=SCORE_TILE, num_warps=4)
        return out
    g = pattern.group_size
    ng = _check_groups(d, pattern)
    members = subset_members(pattern, finv.device)
    C, N = members.shape
    out = torch.empty(ng, C, dtype=torch.float32, device=finv.device)
    MP = next_pow2(g)
    TG = max(1, min(GROUP_TILE, 4096 // (MP * MP)))
    _scores_grouped_kernel[(triton.cdiv(ng, TG),)](
        w, finv, pr, members, out, ng, B, C, *finv.stride(),
        M=g, N=N, IS_NM=pattern.is_nm, HAS_PRUNED=has_pruned, MP=MP, TG=TG, num_warps=4)
    return out if pattern.is_nm else out.reshape(ng)
