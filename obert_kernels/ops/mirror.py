"""``mirror_upper``: complete blocks whose upper triangles alone were accumulated.

Not a Fisher op (no schema): a copy within each block, run once per prune step after flushes
with ``fisher_accumulate(..., upper_only=True)``. The C++ kernel serves dense float32 blocks on
a CPU that runs the extension; torch's ``where`` over slices (``blocks.mirror_upper_torch``)
serves everything else. Both copy, so their bits are the same.
"""
from __future__ import annotations

import torch

from .backends import cpp
from .blocks import mirror_upper_torch

__all__ = ["mirror_upper"]


def mirror_upper(blocks: torch.Tensor) -> torch.Tensor:
    """blocks (num_blocks, B, B), in place: each strict lower triangle ← the transposed upper one,
    so that blocks accumulated with ``fisher_accumulate(..., upper_only=True)`` are symmetric.
    Idempotent (an interrupted call is completed by calling it again). Returns blocks."""
    if not cpp.mirror_upper_reasons(blocks):
        return cpp.mirror_upper_cpp(blocks)
    return mirror_upper_torch(blocks)
