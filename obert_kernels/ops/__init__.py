"""The three kernels of SPEC §2 behind one dispatch (``backend="auto" | "torch" | "triton" | "cuda"``).

Every function checks its arguments once, then hands the call to the chosen backend.
``not_supported_reasons(op, backend, **call)`` says why a backend cannot serve a call;
``backend="auto"`` takes the first of ``PREFERENCE`` that can, an explicit backend raises
``BackendNotSupported`` with the reasons.
"""
from __future__ import annotations

import torch

from ..patterns import Pattern, parse_pattern
from . import _checks, packed
from ._dispatch import BACKENDS, PREFERENCE, BackendNotSupported, not_supported_reasons, register, resolve, resolve_packed
from .packed import init_finv_packed, pack_upper, unpack_upper
from .scores import obs_scores_ref, obs_scores_torch
from .update import UPDATES, obs_update_ref, obs_update_torch
from .woodbury import (
    fisher_accumulate_torch,
    fisher_inverse_ref,
    fisher_invert_torch,
    init_finv,
    naive_woodbury_update,
    woodbury_update_torch,
)

__all__ = [
    "BACKENDS",
    "PREFERENCE",
    "BackendNotSupported",
    "not_supported_reasons",
    "init_finv",
    "init_finv_packed",
    "pack_upper",
    "unpack_upper",
    "woodbury_update",
    "fisher_accumulate",
    "fisher_invert",
    "obs_scores",
    "obs_update",
    "naive_woodbury_update",
    "fisher_inverse_ref",
    "obs_scores_ref",
    "obs_update_ref",
    "UPDATES",
]

register("woodbury_update", "torch", woodbury_update_torch)
register("fisher_accumulate", "torch", fisher_accumulate_torch)
register("fisher_invert", "torch", fisher_invert_torch)
register("obs_scores", "torch", obs_scores_torch)
register("obs_update", "torch", obs_update_torch)


def woodbury_update(finv: torch.Tensor, grads: torch.Tensor, num_grads: int, *, backend: str = "auto") -> torch.Tensor:
    """Apply a chunk of gradients to F⁻¹ by Woodbury (SPEC §2a), in place; returns finv.

    finv: (num_blocks, B, B) float32 (float64 on the torch backend), symmetric positive definite,
    or packed (num_blocks, B(B+1)/2) (ops/packed.py); grads: (k, d) with
    (num_blocks-1)·B < d ≤ num_blocks·B (missing padding is zero), or block-major
    (num_blocks, k, B); any float dtype; num_grads: m, the 1/m of the empirical Fisher.
    """
    _, B = _checks.check_finv(finv)
    grads = _checks.check_grads(grads, finv)
    _checks.check_num_grads(num_grads)
    if packed.is_packed(finv):
        native = resolve_packed("woodbury_update", backend, finv=finv, grads=grads)
        if native:
            return native[1](finv, grads, num_grads)
        return packed.run_tiled_inplace(finv, B, lambda tile, a, b: woodbury_update(
            tile, _grads_tile(grads, B, a, b), num_grads, backend=backend))
    _, fn = resolve("woodbury_update", backend, finv=finv, grads=grads)
    return fn(finv, grads, num_grads)


def fisher_accumulate(fisher: torch.Tensor, grads: torch.Tensor, num_grads: int, *, backend: str = "auto") -> torch.Tensor:
    """Direct path of SPEC §2a, step 1: fisher += Σ g gᵀ / m over a chunk, in place.

    grads: (k, d) or block-major (num_blocks, k, B), as for woodbury_update.

    fisher: (num_blocks, B, B) float32/float64 (or packed), zero before the first chunk.
    """
    _, B = _checks.check_finv(fisher, "fisher")
    grads = _checks.check_grads(grads, fisher)
    _checks.check_num_grads(num_grads)
    if packed.is_packed(fisher):  # accumulate each tile's chunk from zero and add its upper triangle
        for a, b in packed.tiles(fisher.shape[0], B, fisher.element_size()):
            tile = fisher.new_zeros(b - a, B, B)
            fisher_accumulate(tile, _grads_tile(grads, B, a, b), num_grads, backend=backend)
            fisher[a:b] += pack_upper(tile)
        return fisher
    _, fn = resolve("fisher_accumulate", backend, finv=fisher, grads=grads)
    return fn(fisher, grads, num_grads)


def fisher_invert(fisher: torch.Tensor, damp: float, *, backend: str = "auto") -> torch.Tensor:
    """Direct path, step 2: fisher ← (fisher + λI)⁻¹ per block, in place (Cholesky; a block
    that fails is retried with more damping and a warning)."""
    _, B = _checks.check_finv(fisher, "fisher")
    _checks.check_damp(damp)
    if packed.is_packed(fisher):
        return packed.run_tiled_inplace(fisher, B, lambda tile, a, b: fisher_invert(tile, damp, backend=backend))
    _, fn = resolve("fisher_invert", backend, finv=fisher)
    return fn(fisher, damp)


def obs_scores(weight: torch.Tensor, finv: torch.Tensor, pattern: "str | Pattern" = "unstructured", pruned: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Saliency scores of one tensor (SPEC §2b).

    weight: any shape with d elements (flattened row-major); finv: (ceil(d/B), B, B), or
    packed (ceil(d/B), B(B+1)/2);
    pruned: optional bool with d elements, True where already pruned (scores −∞).
    Returns, in finv.dtype: unstructured (d,); block4 (d/4,); N:M (d/M, C(M,N)), one
    score per N-subset in ``Pattern.subsets`` order.
    """
    pattern = parse_pattern(pattern)
    _, B = _checks.check_finv(finv)
    _checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    _checks.check_mask(pruned, weight, "pruned")
    if packed.is_packed(finv):
        native = resolve_packed("obs_scores", backend, weight=weight, finv=finv, pattern=pattern)
        if native:
            return native[1](weight, finv, pattern, pruned)
        w, p = weight.reshape(-1), None if pruned is None else pruned.reshape(-1)
        parts = packed.run_tiled_readonly(finv, B, lambda tile, a, b: obs_scores(
            w[a * B : b * B], tile, pattern, None if p is None else p[a * B : b * B], backend=backend))
        return torch.cat(parts)
    _, fn = resolve("obs_scores", backend, weight=weight, finv=finv, pattern=pattern)
    return fn(weight, finv, pattern, pruned)


def obs_update(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: "str | Pattern" = "unstructured", update: str = "obs", *, backend: str = "auto") -> torch.Tensor:
    """Compensate the remaining weights for the newly pruned ones and zero those (SPEC §2c).

    In place on ``weight`` (any shape, d elements, any float dtype; computed in
    finv.dtype); finv: (ceil(d/B), B, B), or packed (ceil(d/B), B(B+1)/2); prune_mask:
    bool with d elements, True where newly pruned; update: "obs" | "joint" | "none".
    Returns weight.
    """
    pattern = parse_pattern(pattern)
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    _, B = _checks.check_finv(finv)
    _checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    _checks.check_mask(prune_mask, weight, "prune_mask")
    if packed.is_packed(finv):
        native = resolve_packed("obs_update", backend, weight=weight, finv=finv, pattern=pattern, update=update)
        if native:
            return native[1](weight, finv, prune_mask, pattern, update)
        return _tiled_obs_update(weight, finv, B, prune_mask, pattern, update, backend)
    _, fn = resolve("obs_update", backend, weight=weight, finv=finv, pattern=pattern, update=update)
    return fn(weight, finv, prune_mask, pattern, update)


def _grads_tile(grads: torch.Tensor, B: int, start: int, stop: int) -> torch.Tensor:
    """The gradients of blocks [start, stop): block-major rows, or (k, d) columns."""
    return grads[start:stop] if grads.dim() == 3 else grads[:, start * B : stop * B]


def _tiled_obs_update(weight, finv, B, prune_mask, pattern, update, backend):
    """obs_update on a packed F⁻¹ through dense tiles, in place on weight."""
    flat = weight.reshape(-1) if weight.is_contiguous() else weight.detach().reshape(-1).clone()
    mask = prune_mask.reshape(-1)
    packed.run_tiled_readonly(finv, B, lambda tile, a, b: obs_update(
        flat[a * B : b * B], tile, mask[a * B : b * B], pattern, update, backend=backend))
    if flat.data_ptr() != weight.data_ptr():
        with torch.no_grad():
            weight.copy_(flat.reshape(weight.shape))
    return weight


def _load_optional_backends() -> None:
    from ._backends import load_optional_backends

    load_optional_backends()


_load_optional_backends()
