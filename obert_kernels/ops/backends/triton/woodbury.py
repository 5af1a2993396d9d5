"""Fisher-inverse accumulation (SPEC §2a) in Triton: fused Woodbury chunks and the direct path.

Woodbury: each program holds G Fisher blocks as a (G, P, P) fp32 tile in registers
(P = next power of two ≥ B; the padding is masked, never stored) and applies the k
gradients of a chunk one after the other,

    u = F⁻¹ g;   F⁻¹ ← F⁻¹ − (u / (m + gᵀu)) uᵀ,

the operations of the plain per-gradient update in its order (only F⁻¹g is summed over
rows, F⁻¹ being symmetric), so its rounding is that update's: error / naive-fp32 error
against float64 had median 0.98 and max 1.11 over 36 random cases (B 10..32, damp 1e-2..1e-7,
k 4..32, interpreter, 2026-11-21), against SPEC §4's ~2. F⁻¹ crosses device memory once per
chunk instead of once per gradient (SPEC §5: 2·4·B² bytes per block per chunk, 4·B² flops
per gradient).

Direct path: ``fisher_accumulate`` adds Σ g gᵀ / m per block with ``tl.dot`` (fp32,
"ieee": no TF32); ``fisher_invert`` adds λI and inverts each block in registers by the
symmetric sweep (Gauss–Jordan without pivoting: every pivot of an SPD matrix is a
positive Schur complement); a block whose pivot is not positive is left untouched and
redone by the torch backend, which retries with more damping and warns.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...checks import check_finite_blocks
from .util import column_warps, grads_layout, next_pow2, warps_for
from ..torch.woodbury import fisher_invert_torch

__all__ = [
    "woodbury_update_triton",
    "fisher_accumulate_triton",
    "fisher_invert_triton",
    "woodbury_launch_config",
    "WOODBURY_CONFIG_OVERRIDE",
]

# Set by the GPU benchmark's --tune sweep: {"G": blocks per program, "num_warps": ...}.
WOODBURY_CONFIG_OVERRIDE: dict = {}
# Gradients per tl.dot step of the direct accumulation (tl.dot needs K ≥ 16).
ACCUMULATE_K_TILE = 16


@triton.jit
def woodbury_chunk_kernel(
    finv_ptr, grads_ptr, num_blocks, num_new, B, d_limit,
    s_fb, s_fr, s_fc, s_block, s_grad, s_weight, num_grads,
    P: tl.constexpr, G: tl.constexpr,
):
    """finv: (num_blocks, B, B) fp32 with strides s_f*, in place; grads: see ``grads_layout``; num_grads: m."""
    blk = tl.program_id(0) * G + tl.arange(0, G)
    blk64 = blk.to(tl.int64)
    idx = tl.arange(0, P)
    blk_ok = blk < num_blocks
    in_block = idx < B
    tile = blk64[:, None, None] * s_fb + idx[None, :, None] * s_fr + idx[None, None, :] * s_fc
    tile_mask = blk_ok[:, None, None] & in_block[None, :, None] & in_block[None, None, :]
    f = tl.load(finv_ptr + tile, mask=tile_mask, other=0.0)

    g_off = blk64[:, None] * s_block + idx[None, :].to(tl.int64) * s_weight
    g_mask = blk_ok[:, None] & in_block[None, :] & (blk64[:, None] * B + idx[None, :] < d_limit)
    g_ptr = grads_ptr + g_off  # 64-bit pointers, advanced by s_grad: no i·s_grad overflow
    g = tl.load(g_ptr, mask=g_mask, other=0.0).to(tl.float32)
    for i in range(num_new):
        # prefetch the next gradient while this one is applied
        g_ptr += s_grad
        more = (idx * 0 + i + 1) < num_new  # a tensor compare (a Python bool breaks the interpreter's mask)
        nxt = tl.load(g_ptr, mask=g_mask & more[None, :], other=0.0)
        u = tl.sum(f * g[:, :, None], axis=1)  # (G, P) = F⁻¹ g (F⁻¹ symmetric: reduce over rows)
        denom = num_grads + tl.sum(g * u, axis=1)  # (G,)
        f = f - (u / denom[:, None])[:, :, None] * u[:, None, :]
        g = nxt.to(tl.float32)
    tl.store(finv_ptr + tile, f, mask=tile_mask)


@triton.jit
def fisher_accumulate_kernel(
    fisher_ptr, grads_ptr, num_new, B, d_limit,
    s_fb, s_fr, s_fc, s_block, s_grad, s_weight, inv_m,
    P: tl.constexpr, KT: tl.constexpr,
):
    """fisher[b] += Σ_i g_i g_iᵀ · inv_m, one block per program, KT gradients per tl.dot."""
    blk = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, P)
    in_block = idx < B
    tile = blk * s_fb + idx[:, None] * s_fr + idx[None, :] * s_fc
    tile_mask = in_block[:, None] & in_block[None, :]
    acc = tl.zeros((P, P), dtype=tl.float32)
    kk = tl.arange(0, KT)
    col_ok = in_block & (blk * B + idx < d_limit)
    base = grads_ptr + blk * s_block + idx[None, :].to(tl.int64) * s_weight
    for start in range(0, num_new, KT):
        rows = start + kk
        gt = tl.load(base + rows[:, None].to(tl.int64) * s_grad,
                     mask=(rows[:, None] < num_new) & col_ok[None, :], other=0.0).to(tl.float32)  # (KT, P)
        acc = tl.dot(tl.trans(gt), gt, acc, input_precision="ieee")
    f = tl.load(fisher_ptr + tile, mask=tile_mask, other=0.0)
    tl.store(fisher_ptr + tile, f + acc * inv_m, mask=tile_mask)


@triton.jit
def symmetric_sweep(a, c, piv, idx, s):
    """One symmetric sweep of the (P, P) tile ``a`` on pivot s, given c = a[s, :] and piv = c_s.

    a'_ij = a_ij − c_i c_j / p off row and column s; a'_sj = c_j / p; a'_is = c_i / p;
    a'_ss = −1/p. Row and column s are replaced, never computed as differences. (A
    multiply-add form with 0/1 vectors compiled to more sm_90a instructions, 714 vs 646
    per pivot at P = 64, as its row-indexed vectors cost P per thread in this layout.)
    """
    on = idx == s
    scaled = c / piv
    a = a - scaled[:, None] * c[None, :]
    a = tl.where(on[:, None], scaled[None, :], a)
    a = tl.where(on[None, :], scaled[:, None], a)
    return tl.where(on[:, None] & on[None, :], -1.0 / piv, a)


@triton.jit
def fisher_invert_kernel(fisher_ptr, status_ptr, B, s_fb, s_fr, s_fc, damp, P: tl.constexpr):
    """fisher[b] ← (fisher[b] + λI)⁻¹ by the symmetric sweep; status[b] = 1 if a pivot ≤ 0.

    Sweeping pivot s: c = a[:, s], p = c_s; a ← a − c cᵀ/p; a[s, :] = a[:, s] = c/p;
    a[s, s] = −1/p. After all B pivots a = −A⁻¹. The sweep keeps a symmetric, so one
    extraction per pivot suffices, and it is taken along rows (axis 0), which the
    one-column-per-thread layout reduces inside each thread. A failed block is not
    written (the launcher hands it to the torch backend).
    """
    blk = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, P)
    in_block = idx < B
    tile = blk * s_fb + idx[:, None] * s_fr + idx[None, :] * s_fc
    tile_mask = in_block[:, None] & in_block[None, :]
    diag = idx[:, None] == idx[None, :]
    a = tl.load(fisher_ptr + tile, mask=tile_mask, other=0.0)
    a = tl.where(diag & in_block[:, None], a + damp, a)
    bad = tl.program_id(0) * 0  # an int32 scalar that can be loop-carried
    for s in range(B):
        c = tl.sum(tl.where((idx == s)[:, None], a, 0.0), axis=0)  # a[s, :] = a[:, s]
        piv = tl.sum(tl.where(idx == s, c, 0.0), axis=0)
        bad = bad | (~(piv > 0.0)).to(tl.int32)
        a = symmetric_sweep(a, c, piv, idx, s)
    # a = −A⁻¹; the two triangles differ only by rounding: average them
    a = -0.5 * (a + tl.trans(a))
    ok = (idx * 0 + bad) == 0  # as a vector: the interpreter cannot mask with a scalar
    tl.store(fisher_ptr + tile, a, mask=tile_mask & ok[:, None])
    tl.store(status_ptr + blk, bad)


# (G blocks per program, num_warps) by P. Chosen from the sm_90a SASS of the chunk loop
# (bench/results/triton-static-sm90-triton3.9.0-2026-11-21.txt: compiled without a GPU, Triton 3.9;
# under 3.6 every ratio is higher and the same settings win, see the triton3.6.0 report):
# with as many threads as tile columns the compiler gives each thread whole columns, so
# F⁻¹g reduces over rows inside the thread; more warps split rows across threads and add
# shuffles, replicated gradient loads and barriers. Useful FMA per loop instruction at B = P:
#   P=128: (1, 4) 0.60  [(1, 2) 0.54 and (1, 8) 0.18 spill inside the loop]
#   P=64:  (1, 2) 0.55  [(1, 1) 0.64 but spills 200 B outside the loop; (1, 4) 0.21]
#   P=32:  (2, 2) 0.44  [(1, 1) 0.49, (4, 4) 0.41, (1, 2) 0.19]
#   P=16:  (4, 1) 0.38  [(1, 1) 0.17]            P=8: (8, 1) 0.24  [(1, 1) 0.09]
# Not yet timed on a GPU: bench/bench_triton_gpu.py --tune times the alternatives.
WOODBURY_CONFIGS = {128: (1, 4), 64: (1, 2), 32: (2, 2), 16: (4, 1), 8: (8, 1)}


def woodbury_launch_config(B: int) -> tuple[int, int, int]:
    """(P, G, num_warps) for the Woodbury kernel at block size B (see WOODBURY_CONFIGS)."""
    P = next_pow2(B)
    G, warps = WOODBURY_CONFIGS.get(P, (max(1, 64 // P), 1))
    G = WOODBURY_CONFIG_OVERRIDE.get("G", G)
    warps = WOODBURY_CONFIG_OVERRIDE.get("num_warps", warps)
    return P, G, warps


def woodbury_update_triton(finv: torch.Tensor, grads: torch.Tensor, num_grads: int) -> torch.Tensor:
    """Fused chunked Woodbury update, in place on finv; returns finv.

    finv: (num_blocks, B, B) float32 (any strides); grads: (k, d) or block-major
    (num_blocks, k, B), any float dtype and strides, on finv's device.
    """
    nb, B = finv.shape[0], finv.shape[1]
    if grads.dim() == 1:
        grads = grads.unsqueeze(0)
    k = grads.shape[1] if grads.dim() == 3 else grads.shape[0]
    s_block, s_grad, s_weight, d_limit = grads_layout(grads, nb, B)
    P, G, warps = woodbury_launch_config(B)
    woodbury_chunk_kernel[(triton.cdiv(nb, G),)](
        finv, grads, nb, k, B, d_limit, *finv.stride(), s_block, s_grad, s_weight, float(num_grads),
        P=P, G=G, num_warps=warps,
    )
    return finv


def fisher_accumulate_triton(fisher: torch.Tensor, grads: torch.Tensor, num_grads: int,
                             upper_only: bool = False) -> torch.Tensor:
    """Direct path, step 1: fisher += Σ g gᵀ / m per block (in place); returns fisher. upper_only
    is allowed and ignored: both triangles are written.

    fisher: (num_blocks, B, B) float32 (any strides); grads as for woodbury_update_triton.
    """
    nb, B = fisher.shape[0], fisher.shape[1]
    if grads.dim() == 1:
        grads = grads.unsqueeze(0)
    k = grads.shape[1] if grads.dim() == 3 else grads.shape[0]
    s_block, s_grad, s_weight, d_limit = grads_layout(grads, nb, B)
    P = max(16, next_pow2(B))  # tl.dot needs every dimension ≥ 16
    fisher_accumulate_kernel[(nb,)](
        fisher, grads, k, B, d_limit, *fisher.stride(), s_block, s_grad, s_weight, 1.0 / num_grads,
        P=P, KT=ACCUMULATE_K_TILE, num_warps=warps_for(P * P),
    )
    return fisher


def fisher_invert_triton(fisher: torch.Tensor, damp: float) -> torch.Tensor:
    """Direct path, step 2: fisher ← (fisher + λI)⁻¹ per block, in place; returns fisher.

    fisher: (num_blocks, B, B) float32 (any strides). Non-finite input raises (as the torch
    backend does); blocks whose elimination meets a pivot ≤ 0 are redone by the torch
    backend, which retries them with more damping and warns.
    """
    nb, B = fisher.shape[0], fisher.shape[1]
    check_finite_blocks(fisher)  # before anything is written
    status = torch.zeros(nb, dtype=torch.int32, device=fisher.device)
    P = next_pow2(B)
    fisher_invert_kernel[(nb,)](fisher, status, B, *fisher.stride(), float(damp), P=P, num_warps=column_warps(P))
    failed = torch.nonzero(status).flatten()
    if failed.numel():
        fisher[failed] = fisher_invert_torch(fisher[failed].clone(), damp)
    return fisher


# Every jit kernel of this file (the interpreter check and the static report walk them).
KERNELS = (woodbury_chunk_kernel, fisher_accumulate_kernel, fisher_invert_kernel)
