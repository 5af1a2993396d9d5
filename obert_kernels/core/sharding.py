"""Sharding the Fisher blocks over torch.distributed ranks (SPEC §3, many devices).

Blocks are independent, so each rank owns one contiguous range of the blocks of all
tracked tensors (sizes differ by at most one block), allocates F⁻¹ and the gradient
buffer only for those, and takes its share from the gradients every rank already has
(all-reduced, as after DDP's backward). Scores meet in one all-gather for a global
threshold; F⁻¹ never leaves its rank. Updated weights meet in one all-reduce, in which
each weight has exactly one non-zero contribution, so every rank ends bit-identical.

Every collective is preceded by an agreement on failure: a rank that raised tells the
others, which raise ``DistributedPruneError`` naming it instead of waiting forever.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["Shard", "DistributedPruneError", "Piece", "resolve_group", "split_blocks", "local_pieces", "agree",
           "all_gather_flat", "all_reduce_sum"]

T = TypeVar("T")


class DistributedPruneError(RuntimeError):
    """Another rank failed inside a collective step of the pruner."""


class Shard:
    """This process's place in the group: rank, world size, the process group (None alone)."""

    def __init__(self, group=None, rank: int = 0, world: int = 1):
        self.group, self.rank, self.world = group, rank, world

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def __repr__(self) -> str:
        return f"Shard(rank={self.rank}, world={self.world})"


def resolve_group(process_group) -> Shard:
    """None -> the initialized default group if any (else one process); False -> one process."""
    if process_group is False:
        return Shard()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise RuntimeError("process_group was given but torch.distributed is not initialized")
        return Shard()
    group = dist.group.WORLD if process_group is None else process_group
    return Shard(group, dist.get_rank(group), dist.get_world_size(group))


def split_blocks(num_blocks: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) block ranges, one per rank, sizes differing by at most one."""
    base, extra = divmod(num_blocks, world)
    bounds, lo = [], 0
    for r in range(world):
        hi = lo + base + (1 if r < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


@dataclass
class Piece:
    """The part of one tracked tensor whose blocks this rank owns (all of it on one process).

    slot: the tracked tensor (``obert_kernels.core.tracked.Slot``). Its blocks are
    [local_block, local_block + num_blocks) of this rank's Fisher state and its weights are
    [start, stop) of the flattened tensor; pieces start on block bounds.
    """

    slot: Any
    local_block: int
    num_blocks: int
    start: int
    stop: int

    @property
    def blocks(self) -> slice:
        return slice(self.local_block, self.local_block + self.num_blocks)

    @property
    def weights(self) -> slice:
        return slice(self.start, self.stop)


def local_pieces(slots, block_size: int, shard: Shard) -> list[Piece]:
    """This rank's pieces of ``slots`` (each with block_start, num_blocks, numel), in slot order:
    the blocks of ``split_blocks``' range for this rank, cut at tensor bounds."""
    total = sum(s.num_blocks for s in slots)
    lo, hi = split_blocks(total, shard.world)[shard.rank]
    pieces = []
    for slot in slots:
        first, last = max(slot.block_start, lo), min(slot.block_start + slot.num_blocks, hi)
        if first < last:
            start = (first - slot.block_start) * block_size
            stop = min((last - slot.block_start) * block_size, slot.numel)
            pieces.append(Piece(slot, first - lo, last - first, start, stop))
    return pieces


def _comm_device(shard: Shard) -> torch.device:
    """Where the group's collectives take tensors: the current GPU for NCCL, else the CPU (gloo)."""
    import torch.distributed as dist

    if dist.get_backend(shard.group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(shard: Shard, step: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if any rank raised, every rank raises (the failing one its own error)."""
    if not shard.distributed:
        return fn()
    import torch.distributed as dist

    error, result = None, None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others are told
        error = exc
    failed = torch.zeros(shard.world, dtype=torch.int32, device=_comm_device(shard))
    failed[shard.rank] = int(error is not None)
    dist.all_reduce(failed, group=shard.group)
    if error is not None:
        raise error
    if bool(failed.any()):
        ranks = [r for r in range(shard.world) if failed[r]]
        raise DistributedPruneError(f"{step} failed on rank(s) {ranks}; see their errors (this is rank {shard.rank})")
    return result


def all_gather_flat(shard: Shard, local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's 1-D ``local`` in rank order (sizes may differ)."""
    if not shard.distributed:
        return local
    import torch.distributed as dist

    device = _comm_device(shard)
    sizes = torch.zeros(shard.world, dtype=torch.int64, device=device)
    sizes[shard.rank] = local.numel()
    dist.all_reduce(sizes, group=shard.group)
    longest = int(sizes.max())
    padded = torch.zeros(longest, dtype=local.dtype, device=device)
    padded[: local.numel()] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(shard.world)]
    dist.all_gather(parts, padded, group=shard.group)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes)]).to(local.device)


def all_reduce_sum(shard: Shard, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a copy through the CPU for gloo on CUDA tensors)."""
    if not shard.distributed:
        return tensor
    import torch.distributed as dist

    device = _comm_device(shard)
    staged = tensor if tensor.device == device else tensor.to(device)
    dist.all_reduce(staged, group=shard.group)
    if staged is not tensor:
        tensor.copy_(staged)
    return tensor
