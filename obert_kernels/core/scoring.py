"""Scores of every tracked tensor and the weights they select, across tensors and ranks.

Each rank scores its own pieces (its F⁻¹ never leaves it); the flat scores meet in one
all-gather (``sharding.all_gather_flat``), so every rank selects from all of them and
picks the same weights.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .. import ops
from . import selection
from .config import PrunerConfig
from .sharding import Piece, Shard, agree, all_gather_flat
from .tracked import Slot, TrackedTensors
from .weight_update import UPDATE_STRATEGIES

__all__ = ["select_new", "local_scores", "wants_factors", "score_shape"]


def wants_factors(config: PrunerConfig, weight: torch.Tensor, finv: torch.Tensor) -> bool:
    """Whether scoring hands the update its solves: for an update that takes them ("obs"),
    on a backend whose scoring writes them (auto always finds one; CUDA's kernels solve in
    the update instead). weight: flat, at least B long; finv: this rank's blocks."""
    if not UPDATE_STRATEGIES[config.update].uses_factors:
        return False
    if config.backend == "auto":
        return True
    B = config.block_size
    dense = ops.unpack_upper(finv[:1], B) if finv.dim() == 2 else finv[:1]  # the reasons look at a dense block
    return not ops.not_supported_reasons("obs_scores", config.backend, weight=weight[:B], finv=dense,
                                         pattern=config.pattern, return_factors=True)


def local_scores(pieces: list[Piece], weights: Mapping[str, torch.Tensor], finv: torch.Tensor,
                 pruned: Mapping[str, torch.Tensor], config: PrunerConfig, device) -> tuple[torch.Tensor, list]:
    """This rank's scores, each piece flattened, in global block order; and each piece's
    factors for the update (ops.obs_scores(return_factors=True); None where not wanted),
    so the update applies the solves scoring made instead of repeating them.

    weights, pruned: name -> flat (d,) float32 / bool; finv: this rank's blocks."""
    want = bool(pieces) and wants_factors(config, weights[pieces[0].slot.name], finv)
    scores, factors = [], []
    for p in pieces:
        out = ops.obs_scores(weights[p.slot.name][p.weights], finv[p.blocks], config.pattern,
                             pruned[p.slot.name][p.weights], return_factors=want, backend=config.backend)
        scores.append((out[0] if want else out).reshape(-1))
        factors.append(out[1] if want else None)
    return (torch.cat(scores) if scores else torch.zeros(0, device=device)), factors


def score_shape(slot: Slot, config: PrunerConfig) -> tuple[int, ...]:
    """Shape of one tensor's scores: (d,), (d/g,) or (d/M, C(M, N))."""
    g = config.pattern.group_size
    if config.pattern.is_nm:
        return (slot.numel // g, len(config.pattern.subsets))
    return (slot.numel // g,)


def select_new(target: float, weights: Mapping[str, torch.Tensor], finv: torch.Tensor, tracked: TrackedTensors,
               pruned: Mapping[str, torch.Tensor], config: PrunerConfig, shard: Shard) -> tuple[dict[str, torch.Tensor], list]:
    """name -> bool (d,) mask of the weights newly pruned in this step (the same on every
    rank), and this rank's per-piece factors (see ``local_scores``). Collective when sharded."""
    local, factors = agree(shard, "scoring", lambda: local_scores(tracked.pieces, weights, finv, pruned, config,
                                                                  tracked.device))
    flat = all_gather_flat(shard, local)
    scores, offset = {}, 0
    for slot in tracked.slots:
        shape = score_shape(slot, config)
        size = math.prod(shape)
        scores[slot.name] = flat[offset : offset + size].reshape(shape)
        offset += size
    chosen = _choose(scores, target, config)
    return {n: chosen[n] & ~pruned[n] for n in chosen}, factors


def _choose(scores: dict[str, torch.Tensor], target: float, config: PrunerConfig) -> dict[str, torch.Tensor]:
    """name -> bool (d,): the weights the scores select (including already-pruned ones)."""
    pattern = config.pattern
    if pattern.is_nm:
        return {n: selection.select_nm(s, pattern) for n, s in scores.items()}
    pick = selection.select_global if config.global_sparsity else selection.select_per_tensor
    units = pick(scores, target)
    return {n: selection.expand_groups(u, pattern.group_size) for n, u in units.items()}
