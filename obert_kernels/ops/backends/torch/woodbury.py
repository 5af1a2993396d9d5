"""Fisher-inverse accumulation (SPEC §2a): torch backend, naive baseline, float64 oracle.

Two ways to the same F⁻¹ = (λI + (1/m) Σ g gᵀ)⁻¹ per block of B weights:

- Woodbury, chunked: a chunk of k gradients is applied as one rank-k correction
      U = F⁻¹G,  S = m·I_k + GᵀU = L Lᵀ,  W = L⁻¹Uᵀ,  F⁻¹ ← F⁻¹ − WᵀW
  which equals k successive rank-1 updates, but runs as batched matrix products.
- Direct: accumulate Σ g gᵀ / m as a batched GEMM over chunks, then add λI and invert
  each block once through its Cholesky factor.

``naive_woodbury_update`` is the reference implementation's per-gradient update (one
einsum + one baddbmm per gradient); the benchmark and the tolerance rule of SPEC §4 use it.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from ...blocks import padded_blocks
from ...checks import check_finite_blocks

__all__ = [
    "init_finv",
    "woodbury_update_torch",
    "naive_woodbury_update",
    "fisher_accumulate_torch",
    "fisher_invert_torch",
]

# Sub-chunk of the rank-k update, and S = m·I + GᵀU formed and factored in float64 (it is
# only (nb, k, k)). Error / naive fp32 error over 160 random cases (SPEC §4 rule: ≤ ~2),
# measured on the CPU, 2026-11-21:
#   k=8,  S in fp32: median 1.56, max 4.32     k=32, S in fp32: median 2.11, max 8.96
#   k=4,  S in fp64: median 0.80, max 1.09     k=8,  S in fp64: median 0.87, max 1.60
#   k=16, S in fp64: median 0.91, max 2.80
# The rank-k form reads F⁻¹ before the chunk's own corrections shrink it, so rounding
# grows with k; 8 keeps it inside the rule. (The CPU default is the direct path anyway.)
TORCH_WOODBURY_SUBCHUNK = 8

# fisher_invert: blocks per Cholesky + inverse call, ~640 KB (65 blocks of B = 50 in float32):
# a slice, its factor and its inverse stay in a core's L2 (1 MB here), and each slice is
# factored and inverted back to back. Measured on the shared 2-core machine (AMD EPYC, MKL;
# other engineers' load 2-9, so only ratios mean anything), 2026-11-30, wall (cpu) medians:
#   20,000 blocks of 50×50 float32, with the non-finite check
#     one thread:  one lower-factor call, isfinite check (before)  ~1.4 s (0.99 + 0.40 cpu)
#                  these slices, aminmax check                        0.90 s (0.90 cpu)
#     two threads: one call (before): MKL threads every 50×50 call and spins: 7.9-26 s (17 cpu)
#                  these slices on 2 Python threads, MKL at 1 thread  1.0-1.4 s (1.15 cpu)
#   slices of 65 / 209 / 800 blocks, one thread: 0.80 / 0.88 / 0.97 s cpu; factoring all
#   slices first and inverting after (a second trip through memory): 1.05-1.25 s.
# The upper factor (LAPACK's own column-major view of a row-major symmetric block) is ~10%
# cheaper than the lower one here, and its error against float64 was 1.39e-7 vs 1.53e-7 on the
# same blocks. Float64 factors cost 2× (409 vs 160 ms cpu, 4096 blocks) for nothing the float32
# F does not already lose. A 2×2 block Schur inverse with bmm on the 25×25 parts (1 and 2
# levels) was slower (174, 199 vs 160 ms cpu): LAPACK's per-call cost is the same on 25×25 leaves.
# Accuracy, direct path (fisher_accumulate + fisher_invert), error / naive fp32 error (SPEC §4
# rule ≤ ~2) over 24 cases (d = 2000, B = 50, m = 64..256, damp 1e-2..1e-7 at gradient
# scales 1..1e-3): one lower-factor call (before) median 0.61, max 1.68; these slices 0.60, 1.59.
INVERT_SLICE_BYTES = 640 << 10


def init_finv(num_blocks: int, block_size: int, damp: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """F₀⁻¹ = (1/λ)·I for every block: (num_blocks, B, B)."""
    finv = torch.zeros(num_blocks, block_size, block_size, dtype=dtype, device=device)
    finv.diagonal(dim1=1, dim2=2).fill_(1.0 / damp)
    return finv


def _grad_blocks(grads: torch.Tensor, finv: torch.Tensor) -> torch.Tensor:
    """(k, d) or block-major (num_blocks, k, B) gradients -> (num_blocks, B, k) in finv's dtype."""
    if grads.dim() == 3:
        return grads.to(finv.dtype).transpose(1, 2)
    num_blocks, B = finv.shape[0], finv.shape[1]
    blocks = padded_blocks(grads.to(finv.dtype), num_blocks, B)  # (k, nb, B)
    return blocks.permute(1, 2, 0)


def _rank1_updates(finv: torch.Tensor, gblocks: torch.Tensor, num_grads: int) -> None:
    """Apply the k columns of gblocks (nb, B, k) one by one: the plain per-gradient update."""
    for i in range(gblocks.shape[2]):
        g = gblocks[:, :, i]  # (nb, B)
        u = torch.einsum("nij,nj->ni", finv, g)
        denom = num_grads + (g * u).sum(dim=1)
        finv.baddbmm_((u / denom[:, None]).unsqueeze(2), u.unsqueeze(1), alpha=-1.0)


def naive_woodbury_update(finv: torch.Tensor, grads: torch.Tensor, num_grads: int) -> torch.Tensor:
    """Per-gradient rank-1 update, as the reference implementation does it (in place).

    finv: (num_blocks, B, B) float32/float64; grads: (k, d) or (num_blocks, k, B), any float dtype.
    """
    _rank1_updates(finv, _grad_blocks(grads, finv), num_grads)
    return finv


def woodbury_update_torch(finv: torch.Tensor, grads: torch.Tensor, num_grads: int) -> torch.Tensor:
    """Chunked rank-k Woodbury update of every block (in place); see the module docstring.

    finv: (num_blocks, B, B) float32/float64; grads: (k, d) or (num_blocks, k, B), any float dtype.
    """
    gblocks = _grad_blocks(grads, finv)
    k = gblocks.shape[2]
    for start in range(0, k, TORCH_WOODBURY_SUBCHUNK):
        g = gblocks[:, :, start : start + TORCH_WOODBURY_SUBCHUNK].contiguous()
        u = torch.bmm(finv, g)  # (nb, B, kc)
        u64 = u.double()
        s = torch.bmm(g.double().transpose(1, 2), u64)  # (nb, kc, kc)
        s.diagonal(dim1=1, dim2=2).add_(float(num_grads))
        chol, info = torch.linalg.cholesky_ex(s)
        if bool(info.any()):
            # S lost definiteness to rounding (huge ‖g‖²/λ): the rank-1 form never needs a solve.
            _rank1_updates(finv, g, num_grads)
            continue
        w = torch.linalg.solve_triangular(chol, u64.transpose(1, 2), upper=False).to(finv.dtype)  # (nb, kc, B)
        finv.baddbmm_(w.transpose(1, 2), w, alpha=-1.0)
    return finv


def fisher_accumulate_torch(fisher: torch.Tensor, grads: torch.Tensor, num_grads: int,
                            upper_only: bool = False) -> torch.Tensor:
    """fisher += Σ g gᵀ / m over a chunk, blockwise (in place): the direct path. upper_only is
    allowed and ignored: both triangles are written.

    grads: (k, d) or block-major (num_blocks, k, B); block-major is measured ~25% faster
    on 2 CPU cores (d = 10^6, B = 50, k = 32: 99 vs 76 GFLOP/s), as the product needs no transpose.

    fisher: (num_blocks, B, B) float32/float64, starts at zero (λ is added by fisher_invert).
    """
    # One in-place baddbmm over all blocks is the fastest form measured (shared 2-core machine,
    # one thread, cpu time, median of 9, 2026-11-30; d = 10^6, B = 50, k = 32): 30 GFLOP/s
    # (full-square flops) against 52-68 GFLOP/s for one 1024³-2048³ sgemm. Slicing the blocks
    # (32..2048 per call) for cache: 27-29; the (nb, B, k) copy first: 15; a syrk-like 3/4 of
    # the products on strided halves: 14 (MKL copies non-contiguous operands). Larger chunks
    # help (k = 64: 40, k = 128: 44), but k is the pruner's chunk_size, set in core/. With two
    # threads MKL's batched GEMM splits the batch well (24 GFLOP/s, wall): 2 Python threads
    # over slices, as fisher_invert does, gained nothing (22-24).
    g = _grad_blocks(grads, fisher)
    fisher.baddbmm_(g, g.transpose(1, 2), alpha=1.0 / num_grads)
    return fisher


def fisher_invert_torch(fisher: torch.Tensor, damp: float, max_retries: int = 6) -> torch.Tensor:
    """fisher ← (fisher + λI)⁻¹ blockwise through Cholesky (in place).

    fisher: (num_blocks, B, B) float32/float64, symmetric.
    A block whose Cholesky fails in this precision is retried with 10× more damping
    (up to ``max_retries`` times), with a warning that says how many blocks needed it;
    only if that fails too is an error raised (fisher then holds fisher + λI, nothing
    inverted). Non-finite blocks raise at once.
    """
    check_finite_blocks(fisher)
    fisher.diagonal(dim1=1, dim2=2).add_(damp)
    out = torch.empty_like(fisher)  # the inverses; a slice with a failed block keeps its factors here
    info = torch.zeros(fisher.shape[0], dtype=torch.int32, device=fisher.device)
    step = _slice_len(fisher)

    def factor_and_invert(part: slice) -> None:
        chol, info[part] = torch.linalg.cholesky_ex(fisher[part], upper=True)
        out[part] = chol if bool(info[part].any()) else torch.cholesky_inverse(chol, upper=True)

    _over_slices(factor_and_invert, fisher.shape[0], step, fisher.device)
    failed = torch.nonzero(info).flatten()
    if failed.numel():
        _retry_failed_blocks(fisher, out, failed, damp, max_retries)
        for first in torch.unique(failed // step).tolist():
            part = slice(first * step, (first + 1) * step)
            out[part] = torch.cholesky_inverse(out[part], upper=True)
    if fisher.device.type == "cpu":
        fisher.copy_(out)  # LAPACK's potri fills one triangle, torch mirrors it: exactly symmetric
    else:
        # CUDA's cholesky_inverse is symmetric only to rounding (H200, torch 2.11, 2026-11-30:
        # python_tests/ops caught it); the mean of it and its transpose is, bit for bit (a+b = b+a)
        torch.add(out, out.transpose(1, 2), out=fisher).mul_(0.5)
    return fisher


def _retry_failed_blocks(fisher, chol, failed, damp: float, max_retries: int) -> None:
    """Refactor the failed blocks with damp·10^i more on the diagonal, i = 1..max_retries (chol in place)."""
    extra = damp
    for _ in range(max_retries):
        if failed.numel() == 0:
            return
        extra *= 10.0
        sub = fisher[failed]
        sub.diagonal(dim1=1, dim2=2).add_(extra)
        sub_chol, sub_info = torch.linalg.cholesky_ex(sub, upper=True)
        chol[failed] = sub_chol
        warnings.warn(
            f"Cholesky failed for {failed.numel()} Fisher block(s) at damp={damp:g}; "
            f"retried them with damp+{extra:g}",
            RuntimeWarning,
            stacklevel=3,
        )
        failed = failed[torch.nonzero(sub_info).flatten()]
    if failed.numel():
        raise FloatingPointError(
            f"{failed.numel()} Fisher block(s) are not positive definite even with damp+{extra:g}; "
            "check the gradients for overflow or raise damp"
        )


def _slice_len(blocks: torch.Tensor) -> int:
    """Blocks per Cholesky call: ~INVERT_SLICE_BYTES on the CPU; all of them on a GPU (one launch)."""
    if blocks.device.type != "cpu" or blocks.shape[0] == 0:
        return max(1, blocks.shape[0])
    return max(1, INVERT_SLICE_BYTES // (blocks[0].numel() * blocks.element_size()))


def _over_slices(fn, num_blocks: int, step: int, device) -> None:
    """Call fn(slice) over slices of step blocks, on torch.get_num_threads() threads (CPU).

    torch loops over a batch calling LAPACK once per 50×50 block; run as one call with 2
    threads, MKL threads each tiny call and spends most of its time waiting (see INVERT_SLICE_BYTES).
    Slices on Python threads (torch releases the GIL) keep every core on whole blocks.
    """
    parts = [slice(i, i + step) for i in range(0, num_blocks, step)]
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1:
        for part in parts:
            fn(part)
        return
    # MKL reads one global thread count: at 1 while the slices run, each worker's LAPACK calls
    # stay on its own core (restored after). A pool per call (two threads cost ~0.1 ms): a
    # module-level pool would not survive fork.
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(len(parts), threads)) as pool:
            list(pool.map(fn, parts))
    finally:
        torch.set_num_threads(threads)
