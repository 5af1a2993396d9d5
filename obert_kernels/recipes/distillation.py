"""Knowledge distillation from the dense model: the loss gradual pruning trains with.

Labelled tasks (the paper's loss, oBERT §4):

    loss = (1 − h)·task + h·T²·KL(softmax(t/T) ‖ softmax(s/T))

with hardness h ∈ [0, 1], temperature T > 0, teacher logits t and student logits s (the T²
keeps the gradient's scale independent of T, Hinton et al.). Label-free encoders: a loss on
the outputs, 1 − cos(student, teacher) per row (``kind="cosine"``) or the mean squared
error (``kind="mse"``), averaged over the batch.

The teacher is a frozen deep copy of the dense model unless one is given: every parameter
``requires_grad=False``, eval mode (dropout off), and it runs under ``torch.no_grad``.

Plain loop::

    distill = DistillationLoss(model, forward=lambda m, b: m(b[0]),
                               task_loss=lambda logits, b: F.cross_entropy(logits, b[1]),
                               hardness=1.0, temperature=2.0)   # teacher = frozen copy of model, now
    distill.check(model, batch)                                    # outputs' shapes match, before training
    for batch in batches:
        loss = distill(model, batch); loss.backward(); opt.step(); opt.zero_grad()

``transformers.Trainer``: ``integrations.hf_trainer.DistillationTrainer`` (its
``compute_loss`` calls ``distillation_loss`` on the model's and the teacher's logits).
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["kd_loss", "distillation_loss", "embedding_loss", "frozen_teacher", "DistillationLoss", "EMBEDDING_LOSSES"]

EMBEDDING_LOSSES = ("cosine", "mse")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"teacher {what} {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}: "
                         "distillation needs a teacher with the same outputs")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), summed over classes (last dim), averaged over the rest.

    student_logits, teacher_logits: (..., C) floating point, same shape. Returns a scalar in
    the student's dtype promoted to at least float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_pair(student_logits, teacher_logits, "logits")
    s = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return temperature ** 2 * kl.mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task_loss: torch.Tensor | None,
                      hardness: float = 1.0, temperature: float = 2.0) -> torch.Tensor:
    """(1 − h)·task_loss + h·kd_loss(student, teacher, T); task_loss may be None only when h = 1."""
    if not 0.0 <= hardness <= 1.0:
        raise ValueError(f"hardness must be in [0, 1], got {hardness}")
    kd = kd_loss(student_logits, teacher_logits, temperature)
    if hardness == 1.0:
        return kd
    if task_loss is None:
        raise ValueError(f"hardness {hardness} < 1 mixes in the task loss: pass task_loss")
    return (1.0 - hardness) * task_loss + hardness * kd


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over rows of 1 − cos(student_i, teacher_i) ("cosine") or mean squared error ("mse").

    student, teacher: (n, h) embeddings (any leading shape; the last dim is the embedding).
    """
    if kind not in EMBEDDING_LOSSES:
        raise ValueError(f"kind must be one of {EMBEDDING_LOSSES}, got {kind!r}")
    _check_pair(student, teacher, "embeddings")
    teacher = teacher.detach().to(student.dtype)
    if kind == "mse":
        return nn.functional.mse_loss(student, teacher)
    return (1.0 - nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen (requires_grad False)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class DistillationLoss:
    """``loss_fn(model, batch) -> scalar``: distillation from a frozen teacher.

    forward(model, batch) -> outputs: logits (labelled tasks) or embeddings (encoders); the
        same function runs the student and the teacher.
    task_loss(outputs, batch) -> scalar: the labelled task's loss. Given: the paper's
        (1 − h)·task + h·T²·KL; None: ``embedding_loss(kind)`` between the outputs (h, T unused).
    teacher: the model to distil from; None takes ``frozen_teacher(model)`` now, so build
        this before pruning starts.
    """

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, object], torch.Tensor], *,
                 task_loss: Callable[[torch.Tensor, object], torch.Tensor] | None = None, teacher: nn.Module | None = None,
                 hardness: float = 1.0, temperature: float = 2.0, kind: str = "cosine"):
        if not 0.0 <= hardness <= 1.0:
            raise ValueError(f"hardness must be in [0, 1], got {hardness}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if kind not in EMBEDDING_LOSSES:
            raise ValueError(f"kind must be one of {EMBEDDING_LOSSES}, got {kind!r}")
        self.teacher = frozen_teacher(model) if teacher is None else teacher
        self.teacher.eval()
        self.forward, self.task_loss = forward, task_loss
        self.hardness, self.temperature, self.kind = float(hardness), float(temperature), kind

    @torch.no_grad()
    def teacher_outputs(self, batch) -> torch.Tensor:
        """The teacher's outputs on ``batch`` (eval mode, no gradients)."""
        self.teacher.eval()
        return self.forward(self.teacher, batch)

    def check(self, model: nn.Module, batch) -> None:
        """Raise ValueError, before any training, if teacher and student outputs differ in shape on ``batch``."""
        with torch.no_grad():
            _check_pair(self.forward(model, batch), self.teacher_outputs(batch), "outputs")

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        student = self.forward(model, batch)
        teacher = self.teacher_outputs(batch)
        if self.task_loss is None:
            return embedding_loss(student, teacher, self.kind)
        task = None if self.hardness == 1.0 else self.task_loss(student, batch)
        return distillation_loss(student, teacher, task, self.hardness, self.temperature)
