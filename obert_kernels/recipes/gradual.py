"""Gradual pruning during training with the cubic schedule (SPEC §3)."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from .one_shot import collect_grads
from ..core.arguments import check_cubic_schedule
from ..core.pruner import FisherPruner
from ..core.report import PruneReport

__all__ = ["GradualSchedule", "cubic_sparsity"]


def cubic_sparsity(step: int, start_step: int, end_step: int, init_sparsity: float, final_sparsity: float) -> float:
    """s(t) = s_f + (s_i − s_f)(1 − (t − t₀)/(t₁ − t₀))³, clamped to [t₀, t₁]."""
    if end_step == start_step:
        return final_sparsity if step >= start_step else init_sparsity
    frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return final_sparsity + (init_sparsity - final_sparsity) * (1.0 - frac) ** 3


class GradualSchedule:
    """Drive a FisherPruner through a cubic schedule inside any training loop.

    Pruning steps are start_step, start_step + update_every, ... and end_step; at each,
    the target is ``cubic_sparsity``. Gradients come either from the training loop
    (``observe_grads(step)`` after each backward adds ``.grad`` during the num_grads
    steps before a pruning step; needs update_every ≥ num_grads) or, when ``loss_fn``
    and ``batches`` are given, are drawn fresh at each pruning step as in one-shot.

        for t, batch in enumerate(loader):
            loss = ...; loss.backward()
            sched.observe_grads(t)   # only without loss_fn/batches
            opt.step()
            sched.step(t)            # prunes on pruning steps, re-applies masks always
    """

    def __init__(
        self,
        pruner: FisherPruner,
        *,
        init_sparsity: float = 0.0,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        update_every: int,
        loss_fn: Callable | None = None,
        batches: Iterable | None = None,
        model: nn.Module | None = None,
        progress: bool = False,
    ):
        if not isinstance(pruner, FisherPruner):
            raise TypeError("GradualSchedule drives a FisherPruner")
        init_sparsity, final_sparsity, start_step, end_step, update_every = check_cubic_schedule(
            init_sparsity, final_sparsity, start_step, end_step, update_every)
        if (loss_fn is None) != (batches is None):
            raise ValueError("pass both loss_fn and batches (fresh gradients at each pruning step) or neither")
        if loss_fn is not None and model is None:
            raise ValueError("drawing fresh gradients needs the model: pass model=")
        if loss_fn is None and update_every < pruner.num_grads and end_step > start_step:
            raise ValueError(
                f"update_every ({update_every}) < num_grads ({pruner.num_grads}): the training loop cannot supply "
                "enough gradients between pruning steps; pass loss_fn, batches and model to draw them fresh, "
                "or lower num_grads"
            )
        self.pruner = pruner
        self.init_sparsity, self.final_sparsity = float(init_sparsity), float(final_sparsity)
        self.start_step, self.end_step, self.update_every = start_step, end_step, update_every
        self.loss_fn, self.model, self.progress = loss_fn, model, progress
        self._batch_iter = None if batches is None else iter(batches)
        self.enabled = True
        self.reports: list[PruneReport] = []

    def pruning_steps(self) -> list[int]:
        steps = list(range(self.start_step, self.end_step + 1, self.update_every))
        if steps[-1] != self.end_step:
            steps.append(self.end_step)
        return steps

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(step, self.start_step, self.end_step, self.init_sparsity, self.final_sparsity)

    def _next_pruning_step(self, step: int) -> int | None:
        return next((p for p in self.pruning_steps() if p >= step), None)

    def observe_grads(self, step: int) -> bool:
        """After backward at ``step``: add ``.grad`` if it falls in the num_grads steps before a pruning step."""
        if self._batch_iter is not None or not self.enabled:
            return False
        nxt = self._next_pruning_step(step)
        if nxt is None or nxt - step >= self.pruner.num_grads or self.pruner.num_collected >= self.pruner.num_grads:
            return False
        self.pruner.add_grads()
        return True

    def step(self, step: int) -> PruneReport | None:
        """After the optimizer step at ``step``: prune if it is a pruning step, then re-apply masks.

        A pruning step is a transaction (``FisherPruner.transaction``): if it fails, weights,
        masks, history, ``reports`` and the collected gradients are as before the call (those
        drawn fresh in it are dropped), and step(step) can be retried.
        """
        if not self.enabled:
            return None
        if step not in self.pruning_steps():
            self.pruner.apply_masks()  # idempotent: an interrupted call is completed by the next
            return None
        with self.pruner.transaction():
            if self._batch_iter is not None:
                collect_grads(self.pruner, self.model, self.loss_fn, self._batch_iter, progress=self.progress,
                              desc=f"gradients (step {step})")
            if self.pruner.num_collected < self.pruner.num_grads:
                raise RuntimeError(
                    f"pruning step {step} has {self.pruner.num_collected} of {self.pruner.num_grads} gradients: "
                    "call observe_grads(step) after every backward"
                )
            report = self.pruner.prune(self.sparsity_at(step))
            self.pruner.apply_masks()
            self.reports.append(report)  # last: nothing after it can fail
        return report
