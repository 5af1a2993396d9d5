"""What each custom op of ops/library.py runs: the kernel of the backend the wrapper resolved.

A kernel registered with ``packed=True`` (ops/dispatch.py) reads packed F⁻¹
(num_blocks, B(B+1)/2) itself; every other kernel gets it unpacked tile by tile
(ops/packed.py), so each custom op takes either storage on every backend. The choices
that depend on tensor values live here, inside the ops, and not in the public wrappers
(which torch.compile traces): whether scoring's factors give the update's direction
(``obs_update_factors``). The kernels themselves are the backends' (backends/*/).
"""
from __future__ import annotations

from functools import lru_cache

import torch

from . import packed
from .dispatch import kernel
from .patterns import Pattern, parse_pattern
from .backends.torch.update import obs_direction

__all__ = ["woodbury_update", "fisher_accumulate", "fisher_invert", "obs_scores", "obs_update",
           "obs_update_factors", "obs_apply", "sequential_order", "pattern_named"]


@lru_cache(maxsize=None)
def pattern_named(name: str) -> Pattern:
    """The Pattern a schema's ``str pattern`` names (Pattern.name), parsed once per name."""
    return parse_pattern(name)


def _tiled(finv: torch.Tensor, impl) -> int | None:
    """B when finv is packed and the kernel reads dense blocks only (run tile by tile), else None."""
    return packed.packed_block_size(finv.shape[1]) if packed.is_packed(finv) and not impl.packed else None


def _grads_tile(grads: torch.Tensor, B: int, start: int, stop: int) -> torch.Tensor:
    """The gradients of blocks [start, stop): block-major rows, or (k, d) columns."""
    return grads[start:stop] if grads.dim() == 3 else grads[:, start * B : stop * B]


def woodbury_update(finv: torch.Tensor, grads: torch.Tensor, num_grads: int, backend: str) -> None:
    impl = kernel("woodbury_update", backend)
    B = _tiled(finv, impl)
    if B is None:
        impl.fn(finv, grads, num_grads)
    else:
        packed.run_tiled_inplace(finv, B, lambda tile, a, b: impl.fn(tile, _grads_tile(grads, B, a, b), num_grads))


def fisher_accumulate(fisher: torch.Tensor, grads: torch.Tensor, num_grads: int, upper_only: bool,
                      backend: str) -> None:
    impl = kernel("fisher_accumulate", backend)
    B = _tiled(fisher, impl)
    if B is None:
        impl.fn(fisher, grads, num_grads, upper_only=upper_only)
        return
    # each tile's chunk from zero, upper triangle added
    for a, b in packed.tiles(fisher.shape[0], B, fisher.element_size(), fisher.device):
        tile = fisher.new_zeros(b - a, B, B)
        impl.fn(tile, _grads_tile(grads, B, a, b), num_grads)
        fisher[a:b] += packed.pack_upper(tile)


def fisher_invert(fisher: torch.Tensor, damp: float, backend: str) -> None:
    impl = kernel("fisher_invert", backend)
    B = _tiled(fisher, impl)
    if B is None:
        impl.fn(fisher, damp)
    else:
        packed.run_tiled_inplace(fisher, B, lambda tile, a, b: impl.fn(tile, damp))


def obs_scores(weight: torch.Tensor, finv: torch.Tensor, pattern: str, pruned: torch.Tensor | None,
               return_factors: bool, backend: str):
    """Scores, or (scores, factors) with return_factors (kernels without factor support never
    see the keyword: their reasons refuse such calls)."""
    impl, pat = kernel("obs_scores", backend), pattern_named(pattern)
    extra = {"return_factors": True} if return_factors else {}
    B = _tiled(finv, impl)
    if B is None:
        return impl.fn(weight, finv, pat, pruned, **extra)
    w, p = weight.reshape(-1), None if pruned is None else pruned.reshape(-1)
    parts = packed.run_tiled_readonly(finv, B, lambda tile, a, b: impl.fn(
        w[a * B : b * B], tile, pat, None if p is None else p[a * B : b * B], **extra))
    if return_factors:
        return torch.cat([s for s, _ in parts]), torch.cat([f for _, f in parts])
    return torch.cat(parts)


def obs_update(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: str, update: str,
               backend: str) -> None:
    impl, pat = kernel("obs_update", backend), pattern_named(pattern)
    B = _tiled(finv, impl)
    if B is None:
        impl.fn(weight, finv, prune_mask, pat, update)
    else:
        _tiled_update(weight, finv, B, lambda w, tile, m, a, b: impl.fn(w, tile, m, pat, update), prune_mask)


def obs_apply(weight: torch.Tensor, finv: torch.Tensor, direction: torch.Tensor, prune_mask: torch.Tensor,
              backend: str) -> None:
    """w ← w − F⁻¹ v, w_P ← 0 (v: direction, d elements)."""
    impl = kernel("obs_apply", backend)
    B = _tiled(finv, impl)
    if B is None:
        impl.fn(weight, finv, direction, prune_mask)
        return
    v = direction.reshape(-1)
    _tiled_update(weight, finv, B, lambda w, tile, m, a, b: impl.fn(w, tile, v[a * B : b * B], m), prune_mask)


def obs_update_factors(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, factors: torch.Tensor,
                       pattern: str, backend: str, apply_backend: str) -> None:
    """The "obs" update with scoring's factors: only δw = −F⁻¹ v on ``apply_backend`` when every
    group's newly pruned set is one scored candidate (a value test, hence here), else the
    update solves on ``backend`` as without factors."""
    direction = obs_direction(factors, prune_mask, pattern_named(pattern))
    if direction is None:
        obs_update(weight, finv, prune_mask, pattern, "obs", backend)
    else:
        obs_apply(weight, finv, direction, prune_mask, apply_backend)


def sequential_order(weight: torch.Tensor, finv: torch.Tensor, pattern: str, pruned: torch.Tensor | None,
                     backend: str):
    """(order, cumloss) per block (SPEC §2d); a packed F⁻¹ goes to dense-only kernels tile by tile."""
    impl, pat = kernel("sequential_order", backend), pattern_named(pattern)
    B = _tiled(finv, impl)
    if B is None:
        return impl.fn(weight, finv, pat, pruned)
    w, p = weight.reshape(-1), None if pruned is None else pruned.reshape(-1)
    parts = packed.run_tiled_readonly(finv, B, lambda tile, a, b: impl.fn(
        w[a * B : b * B], tile, pat, None if p is None else p[a * B : b * B]))
    return torch.cat([o for o, _ in parts]), torch.cat([c for _, c in parts])


def _tiled_update(weight, finv, B, fn, prune_mask):
    """An update on a packed F⁻¹ through dense tiles, in place on weight:
    fn(weight slice, dense tile, mask slice, first block, end block) per tile."""
    flat = weight.reshape(-1) if weight.is_contiguous() else weight.detach().reshape(-1).clone()
    mask = prune_mask.reshape(-1)
    packed.run_tiled_readonly(finv, B, lambda tile, a, b: fn(flat[a * B : b * B], tile, mask[a * B : b * B], a, b))
    if flat.data_ptr() != weight.data_ptr():
        with torch.no_grad():
            weight.copy_(flat.reshape(weight.shape))
