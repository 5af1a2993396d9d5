"""The weight update of a prune step (SPEC §2c) and the write-back of weights and masks.

``UPDATE_STRATEGIES`` is the extension point for update rules: name -> ``UpdateStrategy``.
FisherPruner's ``update=`` accepts exactly its keys; a strategy's ``apply`` updates one
piece of one tensor in place, and ``uses_factors`` says whether it takes the per-candidate
solves that scoring made (``ops.obs_scores(return_factors=True)``). A new rule is one more
entry (and, if it selects differently, a branch in scoring.select_new, as "sequential" has).

When sharded, each rank updates its own pieces and one all-reduce gives every rank all
updated weights (each weight has exactly one non-zero contribution, so the sum is exact).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .. import ops
from ..ops.patterns import Pattern
from .report import PruneReport, TensorReport
from .sharding import Piece, Shard, agree, all_reduce_sum

__all__ = ["UpdateStrategy", "UPDATE_STRATEGIES", "UPDATES", "updated_weights", "write_back", "write_tensor"]

# apply(weight (d_p,) float32 in place, finv (nb_p, B, B) or packed, newly_pruned (d_p,) bool,
#       already_pruned (d_p,) bool, pattern, factors (from obs_scores, or None), backend) -> None
UpdateFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Pattern, "torch.Tensor | None", str], None]


@dataclass(frozen=True)
class UpdateStrategy:
    apply: UpdateFn
    uses_factors: bool


def _ops_update(name: str) -> UpdateFn:
    """An update that ``ops.obs_update`` implements as mode ``name``."""

    def apply(weight, finv, newly_pruned, already_pruned, pattern, factors, backend):
        ops.obs_update(weight, finv, newly_pruned, pattern, name, factors=factors, backend=backend)

    return apply


def _sequential_update(weight, finv, newly_pruned, already_pruned, pattern, factors, backend) -> None:
    """A block after its greedy prefix (SPEC §2d) = the joint OBS update of all it has lost:
    the new prefix together with the weights pruned before (zero, and conditioned on in the order)."""
    ops.obs_update(weight, finv, newly_pruned | already_pruned, pattern, "joint", backend=backend)


UPDATE_STRATEGIES: dict[str, UpdateStrategy] = {
    "obs": UpdateStrategy(_ops_update("obs"), uses_factors=True),  # summed single-weight/group OBS updates (the paper's)
    "joint": UpdateStrategy(_ops_update("joint"), uses_factors=False),  # one joint solve per block
    "none": UpdateStrategy(_ops_update("none"), uses_factors=False),  # zero the pruned weights only
    # each block removes a prefix of its greedy order (ops.sequential_order; CAP), selected in scoring.py
    "sequential": UpdateStrategy(_sequential_update, uses_factors=False),
}
UPDATES = tuple(UPDATE_STRATEGIES)


def updated_weights(pieces: list[Piece], slots, weights: Mapping[str, torch.Tensor], finv: torch.Tensor,
                    new: Mapping[str, torch.Tensor], pruned: Mapping[str, torch.Tensor], factors: list, config,
                    shard: Shard) -> dict[str, torch.Tensor]:
    """name -> flat float32 weights after the update (fresh tensors, views of one buffer).

    weights: name -> flat (d,) float32 (not changed); new: name -> (d,) bool newly pruned;
    pruned: name -> (d,) bool pruned before this step;
    factors: one per piece (see ``scoring.local_scores``). Collective when sharded.
    """
    strategy = UPDATE_STRATEGIES[config.update]
    sizes = [s.numel for s in slots]
    offsets = dict(zip((s.name for s in slots), itertools.accumulate(sizes, initial=0)))

    def local_update() -> torch.Tensor:
        contrib = torch.zeros(sum(sizes), device=slots[0].tensor.device)
        for p, piece_factors in zip(pieces, factors):
            w = weights[p.slot.name][p.weights].clone()
            strategy.apply(w, finv[p.blocks], new[p.slot.name][p.weights], pruned[p.slot.name][p.weights],
                           config.pattern, piece_factors, config.backend)
            base = offsets[p.slot.name]
            contrib[base + p.start : base + p.stop] = w
        return contrib

    contrib = agree(shard, "weight update", local_update)
    all_reduce_sum(shard, contrib)
    return {s.name: contrib[offsets[s.name] : offsets[s.name] + s.numel] for s in slots}


def write_back(slots, masks, new: Mapping[str, torch.Tensor], updated: dict[str, torch.Tensor],
               report: PruneReport) -> None:
    """Zero every pruned weight of ``updated`` (in place), then copy each into its tensor,
    set the masks (``masks``: PrunedMasks) and fill ``report``'s per-tensor rows.

    Everything is computed before the first tensor or mask changes (each tensor's final
    values in its own dtype and shape); the commit is copies, then one swap of the masks.
    A failure during the copies leaves some tensors written: the caller's transaction
    (``FisherPruner.prune``) puts them back from its copy of the weights.
    """
    pruned = masks.merged_with(new)
    values = {}
    for slot in slots:
        flat = updated[slot.name].masked_fill_(pruned[slot.name], 0.0)
        values[slot.name] = flat.reshape(slot.tensor.shape).to(slot.tensor.dtype)
    rows = {s.name: TensorReport(s.numel, int(pruned[s.name].sum()), int(new[s.name].sum())) for s in slots}
    for slot in slots:
        write_tensor(slot, values[slot.name])
    masks.replace(pruned)
    report.tensors.update(rows)


def write_tensor(slot, values: torch.Tensor) -> None:
    """Copy the final ``values`` (shaped and typed like the tensor) into one tracked tensor."""
    with torch.no_grad():
        slot.tensor.copy_(values)
