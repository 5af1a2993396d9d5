"""Which tracked weights are pruned: the one piece of pruning state that outlives a prune step."""
from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["PrunedMasks"]


class PrunedMasks:
    """name -> flat (d,) bool on the tracked device, True where the weight is pruned.

    ``keep_or_none[name]``: ~pruned, (d,) bool, for the gradient buffer's one-pass masked
    copy; None while nothing of that tensor is pruned, so the copy skips the mask. (Kept
    rather than negated per gradient: one byte per weight, against a pass over the mask and
    a temporary per gradient.) Only ``replace`` changes the masks (the dicts are swapped,
    never edited in place): a reference to ``pruned`` taken before a change still holds the
    masks of before.
    """

    def __init__(self, slots, device: torch.device):
        self.slots = slots
        self.replace({s.name: torch.zeros(s.numel, dtype=torch.bool, device=device) for s in slots})

    def replace(self, pruned: Mapping[str, torch.Tensor]) -> None:
        """Swap in new masks (name -> (d,) bool, True where pruned): everything is computed
        first and both dicts are set in one statement, so a failure leaves the old ones."""
        pruned = dict(pruned)
        keep_or_none = {n: ~m if bool(m.any()) else None for n, m in pruned.items()}
        self.restore((pruned, keep_or_none))

    def snapshot(self) -> tuple[dict, dict]:
        """The current masks, for ``restore`` (references: ``replace`` never edits them in place)."""
        return self.pruned, self.keep_or_none

    def restore(self, snapshot: tuple[dict, dict]) -> None:
        self.pruned, self.keep_or_none = snapshot

    def pruned_from_keep_masks(self, keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """name -> (d,) bool pruned masks from name -> bool keep-masks shaped like the weights
        (a state_dict's "masks"), checked: same names, shapes and dtype, or ValueError. Changes nothing."""
        names = [s.name for s in self.slots]
        if set(keep) != set(names):
            raise ValueError(f"state_dict masks are for {sorted(keep)[:3]}..., this pruner tracks {names[:3]}...")
        for slot in self.slots:
            m = keep[slot.name]
            if tuple(m.shape) != tuple(slot.tensor.shape) or m.dtype != torch.bool:
                raise ValueError(f"mask of {slot.name!r} must be bool of shape {tuple(slot.tensor.shape)}")
        return {s.name: ~keep[s.name].reshape(-1).to(s.tensor.device) for s in self.slots}

    def merged_with(self, new: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """name -> pruned | new (new: (d,) bool of the newly pruned weights); changes nothing."""
        return {s.name: self.pruned[s.name] | new[s.name] for s in self.slots}

    @property
    def keep_masks(self) -> dict[str, torch.Tensor]:
        """name -> bool tensor shaped like the weight, True where the weight is kept."""
        return {s.name: ~self.pruned[s.name].reshape(s.tensor.shape) for s in self.slots}

    @property
    def sparsity(self) -> float:
        """Fraction of tracked weights pruned."""
        return sum(int(p.sum()) for p in self.pruned.values()) / sum(s.numel for s in self.slots)

    @torch.no_grad()
    def zero_pruned_weights(self) -> None:
        """Idempotent: an interrupted call is completed by calling it again."""
        for slot in self.slots:
            slot.tensor.masked_fill_(self.pruned[slot.name].reshape(slot.tensor.shape), 0.0)

    @torch.no_grad()
    def zero_pruned_grads(self) -> None:
        for slot in self.slots:
            if slot.tensor.grad is not None:
                slot.tensor.grad.masked_fill_(self.pruned[slot.name].reshape(slot.tensor.shape), 0.0)
