"""Packed symmetric F⁻¹ storage: each block's upper triangle, (num_blocks, B(B+1)/2).

F⁻¹ is symmetric, so half of the dense (num_blocks, B, B) stack is redundant: the packed
layout keeps row i's entries j ≥ i, rows concatenated (the order of
``torch.triu_indices(B, B)``), (B+1)/(2B) of the dense bytes (51% at B = 50). The CUDA
kernels read and write it directly. The torch (and Triton) backends work on dense
blocks: for a packed F⁻¹ they run tile by tile, unpacking ``tile_blocks(B)`` blocks
(``tile_bytes(device)`` dense: 8 MiB on a CPU, 64 MiB elsewhere) at a time, so the extra
memory is one tile, not a dense copy. The time it costs, measured on 2 shared CPU cores
(d = 2·10^5, B = 50, one 32-gradient chunk, best of 9, 2026-11-21, 64 MiB tiles):
woodbury_update 0.26 vs 0.27 s dense (lost in the op's own cost), fisher_accumulate 0.040
vs 0.014 s on torch (memory-bound: the tile's unpack/pack traffic is the op's size; cpp
adds to packed rows itself), obs_scores unstructured +10 ms. On a GPU the CUDA
backend reads packed blocks directly and pays none of it.

A 2-D finv is packed, a 3-D one dense: every op of ``obert_kernels.ops`` takes either.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

__all__ = [
    "UNPACK_TILE_BYTES",
    "packed_size",
    "packed_block_size",
    "is_packed",
    "pack_upper",
    "unpack_upper",
    "init_finv_packed",
    "diagonal_index",
    "block_diagonals",
    "tile_bytes",
    "tile_blocks",
    "tiles",
]

# Dense bytes per tile when a dense-only backend serves a packed F⁻¹ (the most any device uses:
# the memory estimate counts this much).
UNPACK_TILE_BYTES = 64 * 2**20
# On a CPU a tile is consumed while it is still in the cache: MiniLM's shapes (10.6M weights,
# B = 32, prune(0.8), rel:0.01, median of 3, AMD EPYC with a 32 MiB L3, 2026-12-08) took 3.93 s
# packed with 64 MiB tiles against 2.61 s dense, and 2.56 / 2.76 / 2.44 / 2.41 / 2.48 s with
# tiles of 1 / 2 / 4 / 8 / 16 MiB (bench/results/packed-tile-cpu-2026-12-08.txt).
CPU_UNPACK_TILE_BYTES = 8 * 2**20


def packed_size(block_size: int) -> int:
    """Floats one packed block holds: B(B+1)/2."""
    return block_size * (block_size + 1) // 2


def packed_block_size(num_packed: int) -> int | None:
    """B with B(B+1)/2 == num_packed, or None when num_packed is not a triangular number."""
    B = (math.isqrt(8 * num_packed + 1) - 1) // 2
    return B if B > 0 and packed_size(B) == num_packed else None


def is_packed(finv: torch.Tensor) -> bool:
    """True for the packed layout (a 2-D tensor), False for dense (num_blocks, B, B)."""
    return finv.dim() == 2


_INDEX_CACHE: dict = {}


def _indices(B: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense flat index of each packed entry (P,), packed index of each dense entry (B·B,)), cached."""
    key = (B, str(device))
    if key not in _INDEX_CACHE:
        rows, cols = torch.triu_indices(B, B)
        to_dense = rows * B + cols
        to_packed = torch.empty(B * B, dtype=torch.long)
        order = torch.arange(rows.numel())
        to_packed[to_dense] = order
        to_packed[cols * B + rows] = order
        _INDEX_CACHE[key] = (to_dense.to(device), to_packed.to(device))
    return _INDEX_CACHE[key]


def pack_upper(dense: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(num_blocks, B, B) -> (num_blocks, B(B+1)/2): the upper triangles (the input is
    taken as symmetric; its lower triangle is ignored). Writes into ``out`` if given."""
    if dense.dim() != 3 or dense.shape[1] != dense.shape[2]:
        raise ValueError(f"dense blocks must have shape (num_blocks, B, B), got {tuple(dense.shape)}")
    B = dense.shape[1]
    shape = (dense.shape[0], packed_size(B))
    cpp = _cpp(dense) if out is None else (_cpp(dense, out) if out.shape == shape else None)
    if cpp is not None:
        return cpp.pack_upper_cpp(dense, dense.new_empty(shape) if out is None else out)
    packed = dense.reshape(dense.shape[0], B * B).index_select(1, _indices(B, dense.device)[0])
    return packed if out is None else out.copy_(packed)


def unpack_upper(packed: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    """(num_blocks, B(B+1)/2) -> (num_blocks, B, B), symmetric (a new tensor)."""
    if packed.dim() != 2:
        raise ValueError(f"packed blocks must have shape (num_blocks, B(B+1)/2), got {tuple(packed.shape)}")
    B = block_size or packed_block_size(packed.shape[1])
    if B is None or packed_size(B) != packed.shape[1]:
        raise ValueError(f"{packed.shape[1]} is not B(B+1)/2 for any block size B")
    cpp = _cpp(packed)
    if cpp is not None:
        return cpp.unpack_upper_cpp(packed, packed.new_empty(packed.shape[0], B, B))
    # one gather: every dense entry (i, j) reads packed entry (min(i,j), max(i,j))
    return packed.index_select(1, _indices(B, packed.device)[1]).reshape(packed.shape[0], B, B)


# The C++ copies convert float32 CPU tensors (the same bits as the gathers). Two threads, medians
# of 5, Xeon, 2026-12-01, a 64 MiB tile of 6,710 blocks of 50×50 (how the torch backend's ops read a
# packed F⁻¹): unpack 22.9 against 37.2 ms, pack 13.6 against 24.4 ms; 20,000 blocks 65.3 against
# 101.8 and 37.1 against 69.2 ms (much of it the page faults of the new output). Imported when
# first needed: the backends import this module.
def _cpp(*tensors: torch.Tensor):
    """The cpp backend module when its C++ copies serve these tensors (and a new float32 CPU output
    beside them), else None."""
    from .backends import cpp

    return cpp if cpp.serves_conversion(*tensors) else None


def diagonal_index(block_size: int, device=None) -> torch.Tensor:
    """(B,) int64: where row i's diagonal entry sits in a packed block (i·B − i(i−1)/2)."""
    return torch.tensor([i * (2 * block_size - i + 1) // 2 for i in range(block_size)], device=device)


def block_diagonals(blocks: torch.Tensor) -> torch.Tensor:
    """(num_blocks, B): each block's diagonal, of dense (num_blocks, B, B) blocks (a view) or packed
    (num_blocks, B(B+1)/2) ones (a copy)."""
    if not is_packed(blocks):
        return blocks.diagonal(dim1=1, dim2=2)
    return blocks[:, diagonal_index(packed_block_size(blocks.shape[1]), blocks.device)]


def init_finv_packed(num_blocks: int, block_size: int, damp: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """F₀⁻¹ = (1/λ)·I, packed: (num_blocks, B(B+1)/2)."""
    finv = torch.zeros(num_blocks, packed_size(block_size), dtype=dtype, device=device)
    finv[:, diagonal_index(block_size, device)] = 1.0 / damp
    return finv


def tile_bytes(device=None) -> int:
    """Dense bytes per unpacked tile on ``device`` (None: any device's most, UNPACK_TILE_BYTES)."""
    on_cpu = device is not None and torch.device(device).type == "cpu"
    return min(UNPACK_TILE_BYTES, CPU_UNPACK_TILE_BYTES) if on_cpu else UNPACK_TILE_BYTES


def tile_blocks(block_size: int, itemsize: int = 4, device=None) -> int:
    """Blocks per unpacked tile: as many as fit in ``tile_bytes(device)`` dense, at least one."""
    return max(1, tile_bytes(device) // (block_size * block_size * itemsize))


def tiles(num_blocks: int, block_size: int, itemsize: int = 4, device=None) -> Iterator[tuple[int, int]]:
    """(start, stop) block ranges covering num_blocks, one tile each (``tile_blocks``)."""
    step = tile_blocks(block_size, itemsize, device)
    for start in range(0, num_blocks, step):
        yield start, min(start + step, num_blocks)


def run_tiled_inplace(finv: torch.Tensor, B: int, fn: Callable[[torch.Tensor, int, int], None]) -> torch.Tensor:
    """For each tile: unpack, fn(dense_tile, start, stop) in place, pack back into finv."""
    for start, stop in tiles(finv.shape[0], B, finv.element_size(), finv.device):
        dense = unpack_upper(finv[start:stop], B)
        fn(dense, start, stop)
        pack_upper(dense, out=finv[start:stop])
    return finv


def run_tiled_readonly(finv: torch.Tensor, B: int, fn: Callable[[torch.Tensor, int, int], object]) -> list:
    """For each tile: unpack and collect fn(dense_tile, start, stop)."""
    return [fn(unpack_upper(finv[start:stop], B), start, stop) for start, stop in tiles(finv.shape[0], B, finv.element_size(), finv.device)]
