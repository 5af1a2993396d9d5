"""Sparsity patterns (SPEC §2b): which weights are scored and pruned together.

A pattern cuts the flattened weight vector into aligned groups of ``group_size``
consecutive weights:

- ``unstructured``: groups of 1, each weight scored on its own.
- ``block4``: groups of 4 along the input dimension, pruned as a whole.
- ``N:M`` (e.g. ``2:4``): groups of M, in each of which exactly N weights are pruned,
  choosing the N-subset with the smallest joint saliency.

The rules live in ``obert_kernels.specs`` (no torch: the command line checks --pattern before
it imports torch); this module is their home under ``ops``, the same class and function.
"""
from __future__ import annotations

from ..specs import Pattern, parse_pattern

__all__ = ["Pattern", "parse_pattern"]
