"""Block-OBS saliency scores (SPEC §2b) in Triton; same shapes and ±∞ rules as ``obs_scores_torch``.

- unstructured: ρ_q = w_q² / (2 [F⁻¹]_qq), one lane per weight, reading only the diagonal.
- block4 and N:M: one lane per group of M weights; the group's M×M diagonal sub-block of
  F⁻¹ is loaded once into registers (a (TG, MP, MP) tile, MP = next power of two ≥ M) and
  every N-subset S is scored in the same pass: ½ w_Sᵀ ([F⁻¹]_SS)⁻¹ w_S by symmetric
  elimination (LDLᵀ without square roots) restricted to S, Σ_s y_s² / D_s. block4 is the
  one subset {0, 1, 2, 3}: a 4×4 elimination in registers.

Already-pruned weights give −∞ / +∞ exactly as in ops/scores.py.

Factors for the update (``return_factors=True``): the grouped kernel eliminates each
subset Gauss–Jordan style (the pivot row normalized, the pivot column cleared above and
below), so after the N pivots of S the right-hand side holds v_S = ([F⁻¹]_SS)⁻¹ w_S while
the score accumulates Σ_s y_s² / D_s from the same pivots; with factors asked for, v_S is
stored for every subset ((d/M, C, N) floats: 3× the weights for 2:4), else dropped. The
unstructured kernel stores w_q / [F⁻¹]_qq. A group with a pivot ≤ 0 (the sub-block not
positive definite in float32) flags its program, and the launcher then recomputes the call
on the torch backend, which falls back to a general solve.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...patterns import Pattern
from .util import next_pow2
from ...blocks import check_groups, factor_shape
from ..torch.scores import obs_scores_torch

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
def scores_unstructured_kernel(w_ptr, finv_ptr, pruned_ptr, out_ptr, factors_ptr, d, B, s_fb, s_fd,
                                HAS_PRUNED: tl.constexpr, RETURN_FACTORS: tl.constexpr, TILE: tl.constexpr):
    q = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    ok = q < d
    blk = q // B
    at = q - blk * B
    diag = tl.load(finv_ptr + blk * s_fb + at * s_fd, mask=ok, other=1.0)  # s_fd: diagonal step
    w = tl.load(w_ptr + q, mask=ok, other=0.0).to(tl.float32)
    score = w * w / (2.0 * diag)
    if RETURN_FACTORS:
        tl.store(factors_ptr + q, w / diag, mask=ok)
    if HAS_PRUNED:
        pruned = tl.load(pruned_ptr + q, mask=ok, other=0) != 0
        score = tl.where(pruned, float("-inf"), score)
    tl.store(out_ptr + q, score, mask=ok)


@triton.jit
def scores_grouped_kernel(w_ptr, finv_ptr, pruned_ptr, members_ptr, out_ptr, factors_ptr, status_ptr,
                           num_groups, B, num_subsets, s_fb, s_fr, s_fc,
                           M: tl.constexpr, N: tl.constexpr, IS_NM: tl.constexpr, HAS_PRUNED: tl.constexpr,
                           RETURN_FACTORS: tl.constexpr, MP: tl.constexpr, TG: tl.constexpr):
    """out[q, c] = ½ w_Sᵀ (A_SS)⁻¹ w_S for group q and subset c (members_ptr: (C, N) int32);
    factors[q, c, j] = ((A_SS)⁻¹ w_S)_j; status[program] = 1 if a pivot was ≤ 0."""
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
    bad = (q < 0) & q_ok  # (TG,) all False: a pivot ≤ 0 seen
    for c in range(num_subsets):
        sel = t < 0
        for j in tl.static_range(N):
            sel = sel | (t == tl.load(members_ptr + c * N + j))
        a = tl.where(sel[None, :, None] & sel[None, None, :], a_group, eye[None, :, :].to(tl.float32))
        x = tl.where(sel[None, :], w, 0.0)
        quad = tl.zeros((TG,), dtype=tl.float32)
        for j in tl.static_range(N):  # Gauss–Jordan over the members of S: a → I, x → (A_SS)⁻¹ w_S
            on = t == tl.load(members_ptr + c * N + j)
            row = tl.sum(tl.where(on[None, :, None], a, 0.0), axis=1)  # (TG, MP) = a[:, s, :]
            col = tl.sum(tl.where(on[None, None, :], a, 0.0), axis=2)  # (TG, MP) = a[:, :, s]
            piv = tl.sum(tl.where(on[None, :], row, 0.0), axis=1)
            bad = bad | ~(piv > 0.0)
            xs = tl.sum(tl.where(on[None, :], x, 0.0), axis=1)
            quad += xs * xs / piv  # the LDLᵀ terms y_s² / D_s: unpivoted entries evolve as in LDLᵀ
            mult = col / piv[:, None]
            x = tl.where(on[None, :], (xs / piv)[:, None], x - mult * xs[:, None])
            a = tl.where(on[None, :, None], (row / piv[:, None])[:, None, :], a - mult[:, :, None] * row[:, None, :])
        if RETURN_FACTORS:
            for j in tl.static_range(N):
                on = t == tl.load(members_ptr + c * N + j)
                tl.store(factors_ptr + (q * num_subsets + c) * N + j, tl.sum(tl.where(on[None, :], x, 0.0), axis=1), mask=q_ok)
        score = 0.5 * quad
        if IS_NM:
            outside = tl.sum((pruned & ~sel[None, :]).to(tl.int32), axis=1)  # pruned but not in S
            missing = tl.sum((sel[None, :] & ~pruned).to(tl.int32), axis=1)  # in S but not pruned
            score = tl.where(outside == 0, score, float("inf"))
            score = tl.where(num_pruned >= N, tl.where(missing == 0, float("-inf"), float("inf")), score)
        else:
            score = tl.where(num_pruned == M, float("-inf"), score)
        tl.store(out_ptr + q * num_subsets + c, score, mask=q_ok)
    tl.store(status_ptr + tl.program_id(0), tl.max((bad & q_ok).to(tl.int32), axis=0))


def obs_scores_triton(weight: torch.Tensor, finv: torch.Tensor, pattern: Pattern, pruned: torch.Tensor | None = None,
                      return_factors: bool = False):
    """Saliency scores of one tensor, float32; shapes as ``obs_scores_torch``, and with
    return_factors also the factors (ops/scores.py), float32.

    weight: any shape, d elements, any float dtype; finv: (ceil(d/B), B, B) float32
    (any strides); pruned: bool, d elements, True where already pruned.
    """
    B = finv.shape[1]
    d = weight.numel()
    w = weight.detach().reshape(-1)  # contiguous: a view, or a copy of a strided weight
    has_pruned = pruned is not None
    pr = pruned.detach().reshape(-1).view(torch.uint8) if has_pruned else w  # a dummy pointer when absent
    factors = torch.empty(factor_shape(pattern, d), dtype=torch.float32, device=finv.device) if return_factors else None
    if pattern.group_size == 1:
        out = torch.empty(d, dtype=torch.float32, device=finv.device)
        diag_step = finv.stride(1) + finv.stride(2)
        scores_unstructured_kernel[(triton.cdiv(d, SCORE_TILE),)](
            w, finv, pr, out, out if factors is None else factors, d, B, finv.stride(0), diag_step,
            HAS_PRUNED=has_pruned, RETURN_FACTORS=return_factors, TILE=SCORE_TILE, num_warps=4)
        return (out, factors) if return_factors else out
    g = pattern.group_size
    ng = check_groups(d, pattern)
    members = subset_members(pattern, finv.device)
    C, N = members.shape
    out = torch.empty(ng, C, dtype=torch.float32, device=finv.device)
    MP = next_pow2(g)
    TG = max(1, min(GROUP_TILE, 4096 // (MP * MP)))
    programs = triton.cdiv(ng, TG)
    status = torch.zeros(programs, dtype=torch.int32, device=finv.device)
    scores_grouped_kernel[(programs,)](
        w, finv, pr, members, out, out if factors is None else factors, status, ng, B, C, *finv.stride(),
        M=g, N=N, IS_NM=pattern.is_nm, HAS_PRUNED=has_pruned, RETURN_FACTORS=return_factors, MP=MP, TG=TG, num_warps=4)
    if return_factors and bool(status.any()):  # a sub-block not positive definite in float32: torch's general solve
        return obs_scores_torch(weight, finv, pattern, pruned, return_factors=True)
    out = out if pattern.is_nm else out.reshape(ng)
    return (out, factors) if return_factors else out


# Every jit kernel of this file (the interpreter check and the static report walk them).
KERNELS = (scores_unstructured_kernel, scores_grouped_kernel)
