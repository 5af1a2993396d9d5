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

Distillation from the dense model (``DistillationTrainer``, a Trainer whose ``compute_loss``
is the paper's (1 − h)·task + h·T²·KL on the logits of the model and a frozen teacher)::

    trainer = DistillationTrainer(model=model, args=args, train_dataset=ds, hardness=1.0, temperature=2.0,
                                  callbacks=[ObertPruningCallback(schedule)])   # teacher: frozen copy of model
"""
from __future__ import annotations

import torch

from ..recipes.distillation import distillation_loss, frozen_teacher
from ..recipes.gradual import GradualSchedule

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("ObertPruningCallback needs transformers: pip install 'obert_kernels[models]'") from exc

__all__ = ["ObertPruningCallback", "DistillationTrainer"]


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


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` that trains on distillation from a teacher: (1 − h)·task + h·T²·KL.

    teacher: a model whose forward takes the same inputs and returns ``.logits`` of the
    student's shape; None takes a frozen deep copy of ``model`` when the trainer is built
    (so build it before any pruning). The teacher is kept out of the model (Trainer's
    ``model.train()`` does not reach it), in eval mode, and runs under ``no_grad`` without
    the labels. hardness h ∈ [0, 1] and temperature T > 0 as in ``recipes.distillation``;
    with h < 1 the task loss is the model's own ``outputs.loss`` (the inputs need labels).
    """

    def __init__(self, *args, teacher=None, hardness: float = 1.0, temperature: float = 2.0, **kwargs):
        if not 0.0 <= hardness <= 1.0:
            raise ValueError(f"hardness must be in [0, 1], got {hardness}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(*args, **kwargs)
        self.teacher = (frozen_teacher(self.model) if teacher is None else teacher).to(self.args.device).eval()
        self.hardness, self.temperature = float(hardness), float(temperature)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        with torch.no_grad():
            self.teacher.eval()
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        task = None if self.hardness == 1.0 else outputs.loss
        loss = distillation_loss(outputs.logits, teacher_logits, task, self.hardness, self.temperature)
        return (loss, outputs) if return_outputs else loss
