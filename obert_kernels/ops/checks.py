"""Argument checks shared by every backend's launcher: one place, one wording.

``real_scalar`` is the one definition of "a number" in this package (core/arguments.py
builds its range checks on it): Python ints and floats, NumPy scalars and 0-d arrays,
0-d tensors of a real dtype; never a bool (``damp=True`` is not λ = 1). It and ``check_damp``
live in ``obert_kernels.specs`` (no torch there: the command line uses them before it
imports torch) and are re-exported here.
"""
from __future__ import annotations

import torch

from ..specs import ArgumentTypeError, check_damp, real_scalar  # torch-free, shared with the CLI
from .blocks import factor_shape
from .packed import packed_block_size

FISHER_DTYPES = (torch.float32, torch.float64)


def check_finv(finv: torch.Tensor, name: str = "finv") -> tuple[int, int]:
    """Check a block stack, dense (num_blocks, B, B) or packed (num_blocks, B(B+1)/2)
    (see ops/packed.py), float32/float64; return (num_blocks, B)."""
    if not isinstance(finv, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(finv).__name__}")
    if finv.dim() == 2:
        if finv.shape[1] == 0 or packed_block_size(finv.shape[1]) is None:
            raise ValueError(
                f"a 2-D {name} is packed (num_blocks, B(B+1)/2); {finv.shape[1]} is not B(B+1)/2 for any B"
            )
    elif finv.dim() != 3 or finv.shape[1] != finv.shape[2] or finv.shape[1] == 0:
        raise ValueError(f"{name} must have shape (num_blocks, B, B), or (num_blocks, B(B+1)/2) packed, got {tuple(finv.shape)}")
    if finv.dtype not in FISHER_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {finv.dtype}")
    return block_dims(finv)


def block_dims(finv: torch.Tensor) -> tuple[int, int]:
    """(num_blocks, B) of a dense or packed block stack (already checked)."""
    if finv.dim() == 2:
        return finv.shape[0], packed_block_size(finv.shape[1])
    return finv.shape[0], finv.shape[1]


def check_grads(grads: torch.Tensor, finv: torch.Tensor) -> torch.Tensor:
    """Check a gradient chunk against finv's blocks and return it unchanged.

    Two layouts are accepted:
    - (k, d), one gradient per row, with (num_blocks - 1)·B < d ≤ num_blocks·B (the last
      block's missing padding is zero); a 1-D (d,) is one gradient;
    - (num_blocks, k, B), "block-major": each block's k gradient slices contiguous, the
      layout FisherPruner buffers in, which feeds batched products without a transpose.
    """
    num_blocks, B = block_dims(finv)
    if not isinstance(grads, torch.Tensor):
        raise TypeError(f"grads must be a torch.Tensor, got {type(grads).__name__}")
    if not grads.is_floating_point():
        raise TypeError(f"grads must be floating point, got {grads.dtype}")
    if grads.device != finv.device:
        raise ValueError(f"grads are on {grads.device} but finv is on {finv.device}")
    if grads.dim() == 1:
        grads = grads.unsqueeze(0)
    if grads.dim() == 3:
        if grads.shape[0] != num_blocks or grads.shape[2] != B or grads.shape[1] == 0:
            raise ValueError(f"block-major grads must have shape ({num_blocks}, k, {B}), got {tuple(grads.shape)}")
        return grads
    if grads.dim() != 2 or grads.shape[0] == 0:
        raise ValueError(f"grads must have shape (k, d) or ({num_blocks}, k, {B}), got {tuple(grads.shape)}")
    d = grads.shape[1]
    if not (num_blocks - 1) * B < d <= num_blocks * B:
        raise ValueError(
            f"grads have d={d} weights per row, which does not fill finv's {num_blocks} blocks of {B} "
            f"(expected {(num_blocks - 1) * B + 1}..{num_blocks * B})"
        )
    return grads


def check_num_grads(num_grads: int) -> int:
    """m as a Python int ≥ 1 (NumPy / 0-d tensor integers accepted); ValueError otherwise."""
    value = real_scalar("num_grads", num_grads, "a positive int")
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"num_grads must be a positive int, got {num_grads!r}")
    return value


def check_weight(weight: torch.Tensor, finv: torch.Tensor, name: str = "weight") -> int:
    """Check a weight tensor whose flattened size fits finv's blocks; return d."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {weight.dtype}")
    num_blocks, B = block_dims(finv)
    d = weight.numel()
    if not (num_blocks - 1) * B < d <= num_blocks * B:
        raise ValueError(
            f"{name} has {d} weights but finv holds {num_blocks} blocks of {B} "
            f"(expected {(num_blocks - 1) * B + 1}..{num_blocks * B} weights)"
        )
    if weight.device != finv.device:
        raise ValueError(f"{name} is on {weight.device} but finv is on {finv.device}")
    return d


def check_mask(mask: torch.Tensor | None, weight: torch.Tensor, name: str) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor")
    if mask.numel() != weight.numel():
        raise ValueError(f"{name} has {mask.numel()} entries, weight has {weight.numel()}")
    if mask.device != weight.device:
        raise ValueError(f"{name} is on {mask.device} but weight is on {weight.device}")
    return mask


def check_factors(factors: torch.Tensor, weight: torch.Tensor, finv: torch.Tensor, pattern, update: str) -> None:
    """Check scoring's factors handed to the "obs" update: obs_scores' shape for weight and pattern, finv's device."""
    if update != "obs":
        raise ValueError(f"factors serve update='obs' only (update={update!r} solves for the whole pruned set of a block)")
    if not isinstance(factors, torch.Tensor) or not factors.is_floating_point():
        raise TypeError("factors must be a floating-point tensor, as obs_scores(..., return_factors=True) returns them")
    if factors.device != finv.device:
        raise ValueError(f"factors are on {factors.device} but finv is on {finv.device}")
    expected = factor_shape(pattern, weight.numel())
    if tuple(factors.shape) != expected:
        raise ValueError(f"factors have shape {tuple(factors.shape)}; obs_scores gives {expected} "
                         f"for {weight.numel()} weights and pattern {pattern.name}")


class NonFiniteFisherError(FloatingPointError):
    """The Fisher blocks hold NaN or ±inf: no damping can fix that (unlike a failed Cholesky,
    the other FloatingPointError of an inversion), so callers that retry with more damping
    re-raise this one."""


def check_finite_blocks(blocks: torch.Tensor) -> None:
    """Raise NonFiniteFisherError (a FloatingPointError) if a Fisher block stack holds inf/NaN.

    One min/max reduction per slice of ~2^28 entries: NaN propagates to both and ±inf shows
    in one, so it is exact, and it allocates no bool per entry as isfinite would (11 GB for
    the 43.5 GB F of d = 8.5e7, B = 128). 20,000 blocks of 50×50 on one CPU thread: 24 ms,
    against 459 ms for isfinite(...).all() (2026-11-30).
    """
    if blocks.numel() == 0:
        return
    per_block = max(1, blocks[0].numel())
    for part in blocks.split(max(1, (1 << 28) // per_block)):
        low, high = torch.aminmax(part)
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            raise NonFiniteFisherError("the Fisher blocks hold non-finite values: check the gradients for overflow")


def check_finite_input(t: torch.Tensor, name: str) -> None:
    """ValueError if ``t`` (any shape, floating point) holds NaN or ±inf.

    One aminmax over t (exact, as in check_finite_blocks: NaN propagates to both, ±inf shows
    in one; no bool per entry). Skipped while torch.compile traces (a data-dependent branch
    would break the graph): compiled callers check their inputs themselves.
    """
    if t.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = torch.aminmax(t.detach())
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(f"{name} hold(s) non-finite values (NaN or ±inf): no result could be finite")


def check_finv_diagonal(finv: torch.Tensor, name: str = "finv") -> None:
    """ValueError unless every diagonal entry of every block is finite and > 0: necessary for
    F⁻¹ to be positive definite, and read in O(d) (one entry per weight). The full condition
    (a Cholesky per block, O(B³) each, ~B² times the unstructured scores' cost) is not checked
    here: FisherPruner builds F⁻¹ by Cholesky (ops.fisher_invert) or by Woodbury updates of
    (1/λ)I, which keep it positive definite; a caller passing its own F⁻¹ checks it
    (torch.linalg.cholesky_ex(finv).info == 0). Skipped while torch.compile traces."""
    if finv.numel() == 0 or torch.compiler.is_compiling():
        return
    _, B = block_dims(finv)
    if finv.dim() == 2:  # packed upper triangles, row by row: (i, i) sits at i·(2B − i + 1)/2
        diag = finv[:, [i * (2 * B - i + 1) // 2 for i in range(B)]]
    else:
        diag = finv.diagonal(dim1=1, dim2=2)
    low, high = torch.aminmax(diag)
    if not bool((low > 0) & torch.isfinite(high)):
        raise ValueError(f"{name} is not positive definite: a diagonal entry is ≤ 0 or non-finite "
                         f"(smallest {low.item():g}, largest {high.item():g})")
