"""Sparsity patterns (SPEC §2b): which weights are scored and pruned together.

A pattern cuts the flattened weight vector into aligned groups of ``group_size``
consecutive weights:

- ``unstructured``: groups of 1, each weight scored on its own.
- ``block4``: groups of 4 along the input dimension, pruned as a whole.
- ``N:M`` (e.g. ``2:4``): groups of M, in each of which exactly N weights are pruned,
  choosing the N-subset with the smallest joint saliency.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["Pattern", "parse_pattern"]


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern.

    kind: "unstructured" | "block" | "nm"
    group_size: weights per aligned group (1, 4, or M)
    n_prune: for "nm", how many weights of each group are pruned (N); else 0
    """

    kind: str
    group_size: int
    n_prune: int = 0

    @property
    def name(self) -> str:
        if self.kind == "unstructured":
            return "unstructured"
        if self.kind == "block":
            return f"block{self.group_size}"
        return f"{self.n_prune}:{self.group_size}"

    @property
    def is_nm(self) -> bool:
        return self.kind == "nm"

    def __post_init__(self):
        # computed once here rather than by functools.cached_property, whose lock (Python < 3.12)
        # torch.compile cannot trace: a compiled step may read pattern.subsets
        subsets = tuple(itertools.combinations(range(self.group_size), self.n_prune)) if self.kind == "nm" else None
        object.__setattr__(self, "_subsets", subsets)

    @property
    def subsets(self) -> tuple[tuple[int, ...], ...]:
        """For N:M, every N-subset of range(M) in itertools.combinations order."""
        if self._subsets is None:
            raise AttributeError(f"pattern {self.name} has no subsets")
        return self._subsets

    def check_block_size(self, block_size: int) -> None:
        """Raise ValueError unless Fisher blocks hold whole groups (SPEC §2b)."""
        if block_size % self.group_size:
            raise ValueError(
                f"block_size={block_size} does not fit pattern {self.name!r}: "
                f"it must be divisible by the group size {self.group_size}"
            )

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.name


def parse_pattern(pattern: "str | Pattern") -> Pattern:
    """Parse "unstructured", "block4" or "N:M" (0 < N < M) into a Pattern."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
    text = pattern.strip().lower()
    if text == "unstructured":
        return Pattern("unstructured", 1)
    if text == "block4":
        return Pattern("block", 4)
    if ":" in text:
        left, _, right = text.partition(":")
        if left.isdigit() and right.isdigit():
            n, m = int(left), int(right)
            if 0 < n < m:
                return Pattern("nm", m, n)
    raise ValueError(
        f"unknown pattern {pattern!r}: use 'unstructured', 'block4' or 'N:M' with 0 < N < M (e.g. '2:4')"
    )
