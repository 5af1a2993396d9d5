"""The gradient buffer's copy on a GPU: every tensor of one gradient into its buffer row in one launch.

The pruner's per-tensor path costs three launches a tensor for the finiteness check (now one
multi-tensor reduction) and one or two a tensor for the strided copies: 36 tensors of MiniLM,
~40 launches per ``add_grads`` (H200, 2026-11-30 profile: ~1.1 ms of Python and launches a
gradient in ``write_row``). Here one program copies BLOCK values of one tensor: it reads the
tensor's source address, size, first block and keep-mask address from a small int64 table
(the grouped-GEMM way of passing many tensors), writes them into the (num_blocks, k, B) buffer's
row, +0.0 where the keep-mask is False, and flags the tensor if any value it read (masked or
not) was NaN or ±inf. The caller reads the flags once (one synchronization).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["copy_rows_triton", "KERNELS"]

COPY_BLOCK = 2048  # values per program


@triton.jit
def copy_rows_kernel(table_ptr, buffer_ptr, flags_ptr, row_offset, block_stride, B, BLOCK: tl.constexpr):
    t = tl.program_id(1)
    start = tl.program_id(0) * BLOCK
    n = tl.load(table_ptr + 4 * t + 1)
    if start < n:
        src = tl.load(table_ptr + 4 * t).to(tl.pointer_type(tl.float32))
        first_block = tl.load(table_ptr + 4 * t + 2)
        keep_addr = tl.load(table_ptr + 4 * t + 3)
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n
        v = tl.load(src + offs, mask=inside, other=0.0)
        bad = tl.max(((v - v) != 0).to(tl.int32), axis=0)  # v − v is NaN exactly for NaN and ±inf
        if keep_addr != 0:
            keep = tl.load(keep_addr.to(tl.pointer_type(tl.int8)) + offs, mask=inside, other=0)
            v = tl.where(keep != 0, v, 0.0)
        dst = (first_block + offs // B) * block_stride + row_offset + offs % B
        tl.store(buffer_ptr + dst, v, mask=inside)
        if bad != 0:
            tl.store(flags_ptr + t, 1)


KERNELS = [copy_rows_kernel]


def copy_rows_triton(buffer: torch.Tensor, row: int, sources: list[torch.Tensor], keeps: list[torch.Tensor | None],
                     first_blocks: list[int]) -> int:
    """buffer (num_blocks, k, B) float32 ← each flat sources[t] (d_t,) float32 at row ``row`` of blocks
    [first_blocks[t], ...), +0.0 where keeps[t] ((d_t,) bool or None) is False; returns the index of
    the first source holding a NaN or ±inf (its row written all the same), or -1. Arguments are
    checked by ``ops.copy_rows``."""
    k, B = buffer.shape[1], buffer.shape[2]
    if not sources:
        return -1
    rows = [[s.data_ptr(), s.numel(), first, 0 if m is None else m.data_ptr()]
            for s, m, first in zip(sources, keeps, first_blocks)]
    table = torch.tensor(rows, dtype=torch.int64).to(buffer.device)
    flags = torch.zeros(len(sources), dtype=torch.int32, device=buffer.device)
    longest = max(s.numel() for s in sources)
    grid = (triton.cdiv(max(longest, 1), COPY_BLOCK), len(sources))
    copy_rows_kernel[grid](table, buffer, flags, row * B, k * B, B, BLOCK=COPY_BLOCK)
    bad = torch.nonzero(flags.cpu()).flatten()  # the one synchronization
    return int(bad[0]) if bad.numel() else -1
