"""GradualSchedule inside ``transformers.Trainer``, as a TrainerCallback.

    pruner = FisherPruner(encoder_weights(model), num_grads=64, damp="rel:0.01")
    schedule = GradualSchedule(pruner, final_sparsity=0.8, start_step=100, end_step=900, update_every=100)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[ObertPruningCallback(schedule)])
    trainer.train()

Where it hooks in (Trainer's loop, per optimizer step t = state.global_step before the
increment): ``on_pre_optimizer_step`` (after backward and clipping) offers the step's
gradients to the schedule (``observe_grads(t)``) and zeroes the gradients of pruned
weights; ``on_step_end`` (after the optimizer step) calls ``schedule.step(t)``, which prunes
on pruning steps and re-applies the masks on every step, so weight decay or Adam's
momentum never revive a pruned weight. With ``loss_fn``/``batches`` given to the schedule,
pruning steps draw fresh gradients instead (``update_every`` < ``num_grads`` allowed).
With gradient accumulation, the gradient offered is the accumulated one of the step.
"""
from __future__ import annotations

from ..recipes.gradual import GradualSchedule

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("ObertPruningCallback needs transformers: pip install 'obert_kernels[models]'") from exc

__all__ = ["ObertPruningCallback"]


class ObertPruningCallback(TrainerCallback):
    """Drives ``schedule`` (a GradualSchedule over the Trainer's model) from Trainer's events.

    reports: the PruneReports of the pruning steps so far; they are also logged (sparsity,
    seconds) through Trainer's logger when it logs.
    """

    def __init__(self, schedule: GradualSchedule):
        if not isinstance(schedule, GradualSchedule):
            raise TypeError("ObertPruningCallback drives a GradualSchedule")
        if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
            raise ImportError("ObertPruningCallback needs a transformers whose TrainerCallback has on_pre_optimizer_step "
                              "(the event between backward and the optimizer step): upgrade transformers")
        self.schedule = schedule
        self.reports = []
        self._pending_log = {}

    @property
    def pruner(self):
        return self.schedule.pruner

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.schedule.observe_grads(state.global_step)
        self.pruner.mask_grads()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        report = self.schedule.step(state.global_step - 1)
        if report is not None:
            self.reports.append(report)
            self._pending_log = {"obert/sparsity": report.sparsity, "obert/prune_seconds": report.seconds}
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self._pending_log:
            logs.update(self._pending_log)
            # Trainer appended a copy of ``logs`` to log_history before calling us
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending_log)
            self._pending_log = {}
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.pruner.apply_masks()
        return control
