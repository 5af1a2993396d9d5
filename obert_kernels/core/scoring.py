"""Scores of every tracked tensor and the weights they select, across tensors and ranks.

Each rank scores its own pieces (its F⁻¹ never leaves it); the flat scores meet in one
all-gather (``sharding.all_gather_flat``), so every rank selects from all of them and
picks the same weights.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch

from .. import ops
from . import selection, sequential_select
from .config import PrunerConfig
from .sharding import Piece, Shard, agree, all_gather_flat, all_reduce_sum
from .tracked import Slot, TrackedTensors
from .weight_update import UPDATE_STRATEGIES

__all__ = ["select_new", "select_sequential", "local_scores", "wants_factors", "score_shape"]


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
    rank), and this rank's per-piece factors (see ``local_scores``). Collective when sharded.
    update="sequential" selects by each block's greedy order instead (``select_sequential``)."""
    if config.update == "sequential":
        return select_sequential(target, weights, finv, tracked, pruned, config, shard), [None] * len(tracked.pieces)
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
    if config.global_sparsity:
        units = selection.select_global(scores, target, config.max_tensor_sparsity)
    else:
        units = selection.select_per_tensor(scores, target)
    return {n: selection.expand_groups(u, pattern.group_size) for n, u in units.items()}


def _local_orders(tracked: TrackedTensors, weights, finv, pruned, config: PrunerConfig):
    """This rank's greedy orders (one (blocks, U) int64 per piece) and their cumulative losses
    stacked (blocks, U) float32, U = B / unit size."""
    out = [ops.sequential_order(weights[p.slot.name][p.weights], finv[p.blocks], config.pattern,
                                pruned[p.slot.name][p.weights], backend=config.backend) for p in tracked.pieces]
    U = ops.blocks.units_per_block(config.pattern, config.block_size)
    cum = torch.cat([c.float() for _, c in out]) if out else torch.zeros(0, U, device=tracked.device)
    return [o for o, _ in out], cum, U


def select_sequential(target: float, weights: Mapping[str, torch.Tensor], finv: torch.Tensor, tracked: TrackedTensors,
                      pruned: Mapping[str, torch.Tensor], config: PrunerConfig, shard: Shard) -> dict[str, torch.Tensor]:
    """update="sequential" (SPEC §2d): name -> bool (d,) newly pruned, the same on every rank.

    Each rank orders its own blocks; only the (blocks, U) cumulative losses are gathered for
    the threshold, and each rank's prefixes are summed into the full masks (one non-zero term
    per weight). Zeroes the already-pruned entries of ``weights`` first: the order and the
    joint update of the removed set assume them zero. Collective when sharded.
    """
    for name, w in weights.items():
        w.masked_fill_(pruned[name], 0.0)
    orders, cum, U = agree(shard, "sequential order", lambda: _local_orders(tracked, weights, finv, pruned, config))
    flat = all_gather_flat(shard, cum.reshape(-1)).reshape(-1, U)
    slots, pattern = tracked.slots, config.pattern
    counts = sequential_select.block_counts(
        {s.name: flat[s.block_start : s.block_start + s.num_blocks] for s in slots},
        {s.name: s.numel // ops.blocks.unit_size(pattern) for s in slots},
        {n: sequential_select.pruned_units(m, pattern) for n, m in pruned.items()},
        target, pattern, config.global_sparsity)
    offsets = dict(zip((s.name for s in slots), itertools.accumulate((s.numel for s in slots), initial=0)))
    contrib = torch.zeros(sum(s.numel for s in slots), device=tracked.device)
    for p, order in zip(tracked.pieces, orders):
        first = p.start // config.block_size
        mask = sequential_select.prefix_mask(order, counts[p.slot.name][first : first + p.num_blocks], pattern, p.stop - p.start)
        contrib[offsets[p.slot.name] + p.start : offsets[p.slot.name] + p.stop] = mask.float()
    all_reduce_sum(shard, contrib)
    # a block4 unit may hold weights pruned before: they are not new
    return {s.name: (contrib[offsets[s.name] : offsets[s.name] + s.numel] > 0.5) & ~pruned[s.name] for s in slots}
