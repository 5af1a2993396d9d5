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
from .sequential import sequential_order, sequential_order_ref, sequential_order_torch
from .scores import factor_shape, obs_factors_ref, obs_scores_ref, obs_scores_torch
from .update import UPDATES, obs_apply_torch, obs_direction, obs_update_ref, obs_update_torch
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
    "obs_direction",
    "factor_shape",
    "naive_woodbury_update",
    "fisher_inverse_ref",
    "obs_scores_ref",
    "obs_update_ref",
    "obs_factors_ref",
    "UPDATES",
    "sequential_order",
    "sequential_order_ref",
]

register("woodbury_update", "torch", woodbury_update_torch)
register("fisher_accumulate", "torch", fisher_accumulate_torch)
register("fisher_invert", "torch", fisher_invert_torch)
register("obs_scores", "torch", obs_scores_torch)
register("obs_update", "torch", obs_update_torch)
register("obs_apply", "torch", obs_apply_torch)
register("sequential_order", "torch", sequential_order_torch)


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


def obs_scores(weight: torch.Tensor, finv: torch.Tensor, pattern: "str | Pattern" = "unstructured", pruned: torch.Tensor | None = None, *,
               return_factors: bool = False, backend: str = "auto"):
    """Saliency scores of one tensor (SPEC §2b).

    weight: any shape with d elements (flattened row-major); finv: (ceil(d/B), B, B), or
    packed (ceil(d/B), B(B+1)/2);
    pruned: optional bool with d elements, True where already pruned (scores −∞).
    Returns, in finv.dtype: unstructured (d,); block4 (d/4,); N:M (d/M, C(M,N)), one
    score per N-subset in ``Pattern.subsets`` order.
    return_factors: return (scores, factors), the per-candidate solves ([F⁻¹]_SS)⁻¹ w_S
    that scoring computes anyway — unstructured (d,), block4 (d/4, 4), N:M (d/M, C(M,N), N)
    — for ``obs_update(..., factors=)`` so the "obs" update does not solve them again.
    """
    pattern = parse_pattern(pattern)
    _, B = _checks.check_finv(finv)
    _checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    _checks.check_mask(pruned, weight, "pruned")
    call = dict(weight=weight, finv=finv, pattern=pattern, return_factors=return_factors)
    if packed.is_packed(finv):
        native = resolve_packed("obs_scores", backend, **call)
        if native:
            return native[1](weight, finv, pattern, pruned, **_factors_kwarg(return_factors))
        w, p = weight.reshape(-1), None if pruned is None else pruned.reshape(-1)
        parts = packed.run_tiled_readonly(finv, B, lambda tile, a, b: obs_scores(
            w[a * B : b * B], tile, pattern, None if p is None else p[a * B : b * B],
            return_factors=return_factors, backend=backend))
        if return_factors:
            return torch.cat([s for s, _ in parts]), torch.cat([f for _, f in parts])
        return torch.cat(parts)
    _, fn = resolve("obs_scores", backend, **call)
    return fn(weight, finv, pattern, pruned, **_factors_kwarg(return_factors))


def _factors_kwarg(return_factors: bool) -> dict:
    """Backends without factor support never see the keyword (their reasons refuse such calls)."""
    return {"return_factors": True} if return_factors else {}


def obs_update(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: "str | Pattern" = "unstructured", update: str = "obs", *,
               factors: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Compensate the remaining weights for the newly pruned ones and zero those (SPEC §2c).

    In place on ``weight`` (any shape, d elements, any float dtype; computed in
    finv.dtype); finv: (ceil(d/B), B, B), or packed (ceil(d/B), B(B+1)/2); prune_mask:
    bool with d elements, True where newly pruned; update: "obs" | "joint" | "none".
    factors: for update="obs" only, what ``obs_scores(..., return_factors=True)`` returned
    for the same weight and F⁻¹: the update then takes each pruned group's solve from them
    and only applies δw = −F⁻¹ v (op "obs_apply"). Groups whose newly pruned weights are
    not one scored candidate make it solve as without factors. Returns weight.
    """
    pattern = parse_pattern(pattern)
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    _, B = _checks.check_finv(finv)
    _checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    _checks.check_mask(prune_mask, weight, "prune_mask")
    if factors is not None:
        if update != "obs":
            raise ValueError(f"factors serve update='obs' only (update={update!r} solves for the whole pruned set of a block)")
        if factors.device != finv.device:
            raise ValueError(f"factors are on {factors.device} but finv is on {finv.device}")
        direction = obs_direction(factors, prune_mask, pattern)
        if direction is not None:
            return _obs_apply(weight, finv, direction, prune_mask, B, backend)
    if packed.is_packed(finv):
        native = resolve_packed("obs_update", backend, weight=weight, finv=finv, pattern=pattern, update=update)
        if native:
            return native[1](weight, finv, prune_mask, pattern, update)
        return _tiled_update(weight, finv, B, lambda w, tile, m, a, b: obs_update(
            w, tile, m, pattern, update, backend=backend), prune_mask)
    _, fn = resolve("obs_update", backend, weight=weight, finv=finv, pattern=pattern, update=update)
    return fn(weight, finv, prune_mask, pattern, update)


def _obs_apply(weight, finv, direction, prune_mask, B, backend):
    """w ← w − F⁻¹ v, w_P ← 0 on the chosen backend (packed F⁻¹: dense tiles)."""
    if packed.is_packed(finv):
        v = direction.reshape(-1)
        return _tiled_update(weight, finv, B, lambda w, tile, m, a, b: _obs_apply(
            w, tile, v[a * B : b * B], m, B, backend), prune_mask)
    _, fn = resolve("obs_apply", backend, weight=weight, finv=finv, direction=direction)
    return fn(weight, finv, direction, prune_mask)


def _grads_tile(grads: torch.Tensor, B: int, start: int, stop: int) -> torch.Tensor:
    """The gradients of blocks [start, stop): block-major rows, or (k, d) columns."""
    return grads[start:stop] if grads.dim() == 3 else grads[:, start * B : stop * B]


def _tiled_update(weight, finv, B, fn, prune_mask):
    """An update on a packed F⁻¹ through dense tiles, in place on weight:
    fn(weight slice, dense tile, mask slice, first block, end block) per tile."""
    flat = weight.reshape(-1) if weight.is_contiguous() else weight.detach().reshape(-1).clone()
    mask = prune_mask.reshape(-1)
    packed.run_tiled_readonly(finv, B, lambda tile, a, b: fn(flat[a * B : b * B], tile, mask[a * B : b * B], a, b))
    if flat.data_ptr() != weight.data_ptr():
        with torch.no_grad():
            weight.copy_(flat.reshape(weight.shape))
    return weight


def _load_optional_backends() -> None:
    from ._backends import load_optional_backends

    load_optional_backends()


_load_optional_backends()
