"""The tensors a FisherPruner tracks: where each one's blocks sit, and its gradients checked.

Every tracked tensor is cut into its own blocks of B weights (blocks never straddle
tensors; the last one is zero-padded); the blocks of all tensors, in order, make the Fisher
state, of which each rank owns one contiguous range (``sharding.local_pieces``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.patterns import Pattern
from .damping import BlockLayout, block_layout
from .sharding import Piece, Shard, all_reduce_sum, local_pieces

__all__ = ["Slot", "TrackedTensors", "make_slots", "named_tensors", "prunable_weights", "PRUNABLE_MODULES"]

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(module: nn.Module, types=PRUNABLE_MODULES) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every Linear/Conv module in ``module``, named as in named_parameters."""
    out = []
    for mod_name, mod in module.named_modules():
        if isinstance(mod, types) and isinstance(getattr(mod, "weight", None), torch.Tensor):
            out.append((f"{mod_name}.weight" if mod_name else "weight", mod.weight))
    return out


def named_tensors(params) -> list[tuple[str, torch.Tensor]]:
    """params (an nn.Module, a mapping name -> tensor, or (name, tensor) pairs) as a list of pairs."""
    if isinstance(params, nn.Module):
        return prunable_weights(params)
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an nn.Module, a mapping name -> tensor, or (name, tensor) pairs, not one tensor")
    if isinstance(params, Mapping):
        return list(params.items())
    if isinstance(params, Iterable):
        items = list(params)
        if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in items):
            raise TypeError("an iterable params must hold (name, tensor) pairs")
        return items
    raise TypeError(f"params must be an nn.Module, a mapping or (name, tensor) pairs, got {type(params).__name__}")


@dataclass
class Slot:
    """One tracked tensor and where its blocks sit in the Fisher state of all ranks together."""

    name: str
    tensor: torch.Tensor
    block_start: int
    num_blocks: int

    @property
    def numel(self) -> int:
        return self.tensor.numel()


def make_slots(params, block_size: int, pattern: Pattern) -> list[Slot]:
    """The tracked tensors of ``params`` (see ``named_tensors``), checked, each cut into its blocks of B."""
    named = named_tensors(params)
    if not named:
        raise ValueError("no tensors to prune: params has no Linear/Conv weights or is empty")
    slots, seen_names, seen_ids, start = [], set(), set(), 0
    for name, t in named:
        _check_tensor(name, t, named[0])
        if name in seen_names or id(t) in seen_ids:
            raise ValueError(f"{name!r} is listed twice (same name or same tensor)")
        _check_row_fits_pattern(name, t, pattern)
        seen_names.add(name)
        seen_ids.add(id(t))
        nb = -(-t.numel() // block_size)
        slots.append(Slot(name, t, start, nb))
        start += nb
    _check_no_shared_memory(slots)
    return slots


def _check_tensor(name: str, t, first: tuple[str, torch.Tensor]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name!r} is not a tensor ({type(t).__name__})")
    if not t.is_floating_point():
        raise TypeError(f"{name!r} has dtype {t.dtype}; only floating-point tensors can be pruned")
    if t.numel() == 0:
        raise ValueError(f"{name!r} is empty")
    if t.device != first[1].device:
        raise ValueError(f"{name!r} is on {t.device} but {first[0]!r} is on {first[1].device}: put all tracked tensors on one device")
    if t.is_inference():
        raise ValueError(f"{name!r} is an inference tensor (made under torch.inference_mode()), which cannot be "
                         "updated in place outside it: pass a tensor made outside inference mode (e.g. t.clone())")
    if _span(t) < t.numel():
        # an expand()ed (stride-0) or as_strided view: several weights share one memory cell, so
        # writing the updated weights would leave some "pruned" ones non-zero (issue 14)
        raise ValueError(f"{name!r} has weights that share memory (strides {tuple(t.stride())} for shape "
                         f"{tuple(t.shape)}, e.g. from expand()): pass a tensor of its own (t.clone())")


def _span(t: torch.Tensor) -> int:
    """Memory cells (elements) ``t`` spans if no two of its elements overlap; less than
    ``t.numel()`` when some do (the test is exact for any permutation of a dense or sliced
    layout, and refuses the rare interleaved non-overlapping as_strided layouts too)."""
    reach = 0  # the largest offset reached by the dims of smaller stride
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= reach:
            return 0
        reach += (size - 1) * stride
    return t.numel()


def _check_no_shared_memory(slots: list["Slot"]) -> None:
    """Two tracked tensors must not share memory (views of one another): a write-back to one
    would change the other behind its mask."""
    spans = []
    for s in slots:
        t = s.tensor
        lo = t.storage_offset()
        hi = lo + sum((sz - 1) * st for sz, st in zip(t.shape, t.stride()))
        spans.append((t.untyped_storage().data_ptr(), lo * t.element_size(), (hi + 1) * t.element_size(), s.name))
    spans.sort()
    for (ptr_a, _, end_a, name_a), (ptr_b, start_b, _, name_b) in zip(spans, spans[1:]):
        if ptr_a == ptr_b and start_b < end_a:
            raise ValueError(f"{name_a!r} and {name_b!r} share memory (views of one tensor): track each weight once")


def _check_row_fits_pattern(name: str, t: torch.Tensor, pattern: Pattern) -> None:
    g = pattern.group_size
    row = t.numel() // t.shape[0] if t.dim() > 1 else t.numel()
    if g > 1 and row % g:
        raise ValueError(
            f"{name!r} has rows of {row} weights, not divisible by the group size {g} of pattern "
            f"{pattern.name!r}: groups would straddle rows"
        )


class TrackedTensors:
    """The tracked tensors (``slots``, from ``make_slots``, in the user's order) and this
    rank's ``pieces`` of them."""

    def __init__(self, slots: list[Slot], block_size: int, shard: Shard):
        self.slots, self.block_size = slots, block_size
        self.device = slots[0].tensor.device
        self.pieces: list[Piece] = local_pieces(slots, block_size, shard)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def num_blocks(self) -> int:
        """Fisher blocks of all tracked tensors (all ranks together)."""
        return sum(s.num_blocks for s in self.slots)

    @property
    def local_num_blocks(self) -> int:
        """Fisher blocks this process holds (all of them unless sharded)."""
        return sum(p.num_blocks for p in self.pieces)

    @property
    def num_weights(self) -> int:
        return sum(s.numel for s in self.slots)

    def slot(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(f"{name!r} is not tracked; tracked: {self.names[:5]}{'...' if len(self.names) > 5 else ''}")

    def float32_weights(self) -> dict[str, torch.Tensor]:
        """name -> a float32 copy of the weights, flat (d,), on the tracked device."""
        return {s.name: s.tensor.detach().reshape(-1).to(self.device, torch.float32, copy=True) for s in self.slots}

    def gradients(self, grads, check: Callable[[str, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Gradients in slot order, each checked (type, shape, then ``check(name, grad)``)
        before the caller writes anything.

        grads: None (each tensor's ``.grad``), a mapping name -> tensor, or a sequence in slot order.
        """
        got = self._gradients_in_order(grads)
        for slot, g in zip(self.slots, got):
            if not isinstance(g, torch.Tensor) or not g.is_floating_point():
                raise TypeError(f"gradient of {slot.name!r} must be a floating-point tensor")
            if g.shape != slot.tensor.shape:
                raise ValueError(f"gradient of {slot.name!r} has shape {tuple(g.shape)}, weight has {tuple(slot.tensor.shape)}")
            if check is not None:
                check(slot.name, g)
        return got

    def _gradients_in_order(self, grads) -> list:
        if grads is None:
            got = [s.tensor.grad for s in self.slots]
            missing = [s.name for s, g in zip(self.slots, got) if g is None]
            if missing:
                raise ValueError(f"no .grad on {missing[:3]}{'...' if len(missing) > 3 else ''}: run backward() first")
            return got
        if isinstance(grads, Mapping):
            unknown = set(grads) - set(self.names)
            missing = [n for n in self.names if n not in grads]
            if unknown or missing:
                raise ValueError(f"grads must have exactly the tracked names; missing {missing[:3]}, unknown {sorted(unknown)[:3]}")
            return [grads[n] for n in self.names]
        got = list(grads)
        if len(got) != len(self.slots):
            raise ValueError(f"got {len(got)} gradients for {len(self.slots)} tracked tensors")
        return got

    def layout(self, pruned: Mapping[str, torch.Tensor], shard: Shard) -> BlockLayout:
        """Where this rank's blocks sit (tensor, live weights); pruned: name -> (d,) bool.
        When sharded, the layout's ``reduce`` sums per-tensor statistics over the ranks."""
        slot_index = {s.name: i for i, s in enumerate(self.slots)}
        reduce = (lambda t: all_reduce_sum(shard, t)) if shard.distributed else None
        return block_layout([p.num_blocks for p in self.pieces], [pruned[p.slot.name][p.weights] for p in self.pieces],
                            self.block_size, self.device, tensor_ids=[slot_index[p.slot.name] for p in self.pieces],
                            num_tensors=len(self.slots), reduce=reduce)
