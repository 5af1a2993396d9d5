"""Block and group layout shared by every backend, the references and selection.

A tensor of d weights is cut into ceil(d/B) Fisher blocks of B (the last zero-padded);
a pattern's groups (1 weight, 4 for block4, M for N:M) tile each block.
"""
from __future__ import annotations

import torch

from .patterns import Pattern

__all__ = ["padded_blocks", "mirror_upper_torch", "MIRROR_SLICE", "group_diag_blocks",
           "nm_subset_masks", "score_shape", "factor_shape", "check_groups"]


def padded_blocks(flat: torch.Tensor, num_blocks: int, B: int) -> torch.Tensor:
    """View (..., d) as (..., num_blocks, B), zero-padding the last block when d < num_blocks*B."""
    d = flat.shape[-1]
    if d != num_blocks * B:
        flat = torch.nn.functional.pad(flat, (0, num_blocks * B - d))
    return flat.reshape(*flat.shape[:-1], num_blocks, B)


# Blocks per step of mirror_upper: a slice and its temporary stay in cache. One thread, wall,
# 2026-11-30 (20,000 blocks of 50×50 | 331,776 of 32×32): torch.where over slices of 256 blocks
# 0.074 | 0.40 s, of 2048 0.088 | 0.43 s; triu + transposed triu 0.12 | 0.66 s; B row→column
# copies per slice of 128 (no temporary) 0.24 | 1.35 s.
MIRROR_SLICE = 256


def mirror_upper_torch(blocks: torch.Tensor) -> torch.Tensor:
    """blocks (num_blocks, B, B), in place: each strict lower triangle ← the transposed upper one,
    so that blocks accumulated with ``fisher_accumulate(..., upper_only=True)`` are symmetric.
    Idempotent (an interrupted call is completed by calling it again). Temporary: one slice
    (MIRROR_SLICE blocks). Returns blocks."""
    B = blocks.shape[-1]
    lower = torch.ones(B, B, dtype=torch.bool, device=blocks.device).tril_(-1)
    for start in range(0, blocks.shape[0], MIRROR_SLICE):
        part = blocks[start : start + MIRROR_SLICE]
        part.copy_(torch.where(lower, part.transpose(1, 2), part))
    return blocks


def group_diag_blocks(finv: torch.Tensor, group_size: int) -> torch.Tensor:
    """The g×g diagonal sub-blocks of every block: (num_blocks·B/g, g, g), a view when possible."""
    nb, B = finv.shape[0], finv.shape[1]
    a = B // group_size
    sub = finv.reshape(nb, a, group_size, a, group_size).diagonal(dim1=1, dim2=3)  # (nb, g, g, a)
    return sub.permute(0, 3, 1, 2).reshape(nb * a, group_size, group_size)


def nm_subset_masks(pattern: Pattern, device=None) -> torch.Tensor:
    """(C(M,N), M) bool: row c marks the members of Pattern.subsets[c]."""
    masks = torch.zeros(len(pattern.subsets), pattern.group_size, dtype=torch.bool, device=device)
    for c, subset in enumerate(pattern.subsets):
        masks[c, list(subset)] = True
    return masks


def score_shape(pattern: Pattern, d: int) -> tuple[int, ...]:
    """Shape of the scores obs_scores returns for d weights: (d,), (d/g,), or (d/M, C(M,N)) for N:M."""
    g = pattern.group_size
    if g == 1:
        return (d,)
    if pattern.is_nm:
        return (d // g, len(pattern.subsets))
    return (d // g,)


def factor_shape(pattern: Pattern, d: int) -> tuple[int, ...]:
    """Shape of the factors obs_scores returns for d weights (module docstring)."""
    g = pattern.group_size
    if g == 1:
        return (d,)
    if pattern.is_nm:
        return (d // g, len(pattern.subsets), pattern.n_prune)
    return (d // g, g)


def check_groups(d: int, pattern: Pattern) -> int:
    """The number of groups in d weights; refuses a d the group size does not divide."""
    if d % pattern.group_size:
        raise ValueError(f"pattern {pattern.name} needs the weight count ({d}) divisible by {pattern.group_size}")
    return d // pattern.group_size


def unit_size(pattern: Pattern) -> int:
    """Weights removed per greedy step: the group size for block patterns, else 1."""
    return pattern.group_size if pattern.kind == "block" else 1


def units_per_block(pattern: Pattern, B: int) -> int:
    """U, the columns of order and cumloss: B / unit_size."""
    return B // unit_size(pattern)
