"""Rollback points of a FisherPruner: a call either completes or leaves things as they were (issue 14).

A ``Checkpoint`` records, before a call changes anything, everything the call may change:

- the damping policy's attributes (AutoDamp's choice of λ), a shallow copy of a few fields;
- the masks (references: ``PrunedMasks`` swaps its dicts, never edits them in place);
- the history (a shallow copy of the list of reports);
- the Fisher state of the step (a reference) and its buffer's ``Counts``;
- optionally, the tracked weights: the one copy of data a checkpoint makes (d weights in
  their own dtype, e.g. 4 bytes a weight for float32, 1/B of a dense F).

``restore`` puts them back. The Fisher state cannot be copied cheaply (d·B floats), so it
is never copied here; instead each stage that changes it in place can be undone or resumed
on its own (``fisher_state``): a flush slice is put back from its scratch copy, and the
direct build's inversion resumes where it stopped (``inversion``). What ``restore`` does
with it:

- none before the call: the state is dropped (gradients collected during the call go);
- the same gradients as before (a failed prune, or a flush that stopped half-way and will
  resume): kept, with an inversion that started resuming at the next try, so prune() can
  be retried;
- more gradients than before, all still in the buffer (not yet applied): the counts are
  put back (the rows past them are scratch);
- more gradients than before, some already applied to F (only a call that both adds a
  full chunk and then fails, e.g. a ``GradualSchedule`` step drawing fresh gradients when
  the pruner already held some): F cannot give them back; the state is dropped and the
  exception gets a note saying how many gradients were lost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .fisher_state import FisherBuild
from .grad_buffer import Counts
from .masks import PrunedMasks

__all__ = ["Checkpoint"]


@dataclass
class Checkpoint:
    """What a call may change, as it was before (see the module doc)."""

    damping: object  # the policy (a ``damping.Damping``)
    damping_fields: dict
    masks: tuple
    history: list
    state: FisherBuild | None
    counts: Counts | None
    weights: list  # (Slot, saved tensor) pairs; empty when not asked for
    lost: int = 0  # gradients a restore had to drop

    @classmethod
    def take(cls, damping, masks: PrunedMasks, history: list, state: FisherBuild | None, slots=()) -> "Checkpoint":
        return cls(damping, dict(vars(damping)), masks.snapshot(), list(history), state,
                   None if state is None else state.grads.counts,
                   [(slot, slot.tensor.detach().clone()) for slot in slots])

    def restore(self, masks: PrunedMasks, history: list) -> FisherBuild | None:
        """Put the weights, masks, history and damping back; returns the Fisher state the pruner
        should hold from now on (and sets ``lost`` if it had to drop gradients)."""
        with torch.no_grad():
            for slot, saved in self.weights:
                slot.tensor.copy_(saved)
        masks.restore(self.masks)
        history[:] = self.history
        fields = vars(self.damping)
        fields.clear()
        fields.update(self.damping_fields)
        return self._fisher_state()

    def _fisher_state(self) -> FisherBuild | None:
        state = self.state
        if state is None:
            return None
        now, before = state.grads.counts, self.counts
        if now.collected == before.collected:
            return state  # the same gradients (a flush may have advanced: it resumes)
        applied_now, applied_before = now.collected - now.filled, before.collected - before.filled
        if applied_now == applied_before and now.applied_blocks == 0 and state.grads.buffer is not None:
            state.grads.counts = before  # the new gradients are only in buffer rows: give them back
            return state
        self.lost = before.collected
        return None

    def note(self, exc: BaseException) -> None:
        """Tell the exception's reader what a restore could not keep."""
        if self.lost:
            exc.add_note(f"obert_kernels: the {self.lost} gradients collected before this call were discarded "
                         "(part of them had been applied to the Fisher state with the new ones); collect them again")
