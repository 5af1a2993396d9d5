"""Gradual pruning during fine-tuning, as one call: the paper's main recipe (oBERT §4).

``gradual_prune`` fine-tunes ``model`` on ``loss_fn`` (typically a ``DistillationLoss`` from
the dense model) for ``steps`` optimizer steps while the weights in ``params`` are pruned on
the cubic schedule (``GradualSchedule``): pruning steps at prune_start, prune_start +
update_every, ..., prune_end, each to s(t) = s_f + (s_i − s_f)(1 − (t − t₀)/(t₁ − t₀))³; after
prune_end the masks stay fixed and training recovers. Methods: "obs" | "joint" |
"sequential" (FisherPruner's updates) or "magnitude" (gradual magnitude pruning, GMP, the
paper's baseline, on the same steps, loss and optimizer).

Fisher gradients (oBERT methods): from the training loop's own backward passes (the
num_grads steps before each pruning step; needs update_every ≥ num_grads), or, with
``fisher_loss`` and ``fisher_batches``, drawn fresh at each pruning step (in eval mode,
only the pruned tensors requiring grad), e.g. the Gauss-Newton probe of an encoder. Fresh
gradients matter under distillation: at the dense start the student equals the teacher and
the distillation loss's gradients are zero, so the loop's gradients say little early on.

Optimizer and learning rate: AdamW(lr, weight_decay) over ``train_params`` (default: every
parameter of the model that requires grad) with a linear schedule: warm-up from 0 to lr over
warmup_steps, then linear decay to final_lr_fraction·lr at the last step
(``lr_factor``). Pass ``optimizer=`` to use your own (the LR schedule then still scales its
groups' initial "lr").

Pruned weights stay exactly zero: before every optimizer step their gradients are zeroed,
after it the masks are re-applied, and at every pruning step the optimizer's state
(AdamW's exp_avg, exp_avg_sq) of newly pruned weights is zeroed, so neither momentum nor
weight decay moves them (``MaskKeeper``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.profiling import peak_rss, reset_peak_rss
from ..core.pruner import FisherPruner, named_tensors
from ..specs import PRUNE_END_FRACTION
from .baselines import magnitude_prune
from .gradual import GradualSchedule, cubic_sparsity
from .prune_model import grads_only_for

__all__ = ["PRUNE_END_FRACTION", "prune_end_step", "gradual_prune", "check_schedule", "finetune_with_masks", "GradualRun", "MaskKeeper", "lr_factor", "plan_pruning_steps",
           "GRADUAL_METHODS"]

GRADUAL_METHODS = ("obs", "joint", "sequential", "magnitude")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> float:
    """Multiplier of the base lr at ``step`` (0-based): linear warm-up (step+1)/warmup over the
    first warmup_steps, then linear decay from 1 to final_fraction at step total_steps − 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - 1 - warmup_steps, 1)
    return 1.0 - (1.0 - final_fraction) * min((step - warmup_steps) / span, 1.0)


def prune_end_step(fraction: float, steps: int) -> int:
    """The last pruning step at ``fraction`` of ``steps`` (the default, the command line's
    --prune-end and the example tables all count it this one way)."""
    return int(fraction * steps)


def plan_pruning_steps(start: int, end: int, update_every: int, init_sparsity: float, final_sparsity: float) -> list[tuple[int, float]]:
    """(step, target) of each pruning step that prunes something: GradualSchedule's steps
    (start, start + update_every, ..., end) without those whose cubic target is 0."""
    steps = list(range(start, end + 1, update_every))
    if steps[-1] != end:
        steps.append(end)
    plan = [(t, cubic_sparsity(t, start, end, init_sparsity, final_sparsity)) for t in steps]
    return [(t, s) for t, s in plan if s > 0.0]


class MaskKeeper:
    """Keeps pruned weights at exactly zero through optimizer steps.

    params: (name, tensor) pairs; masks: name -> bool keep-mask shaped like the tensor
    (True = kept). ``zero_grads`` before the optimizer step, ``zero_weights`` after it,
    ``zero_optimizer_state(opt)`` when the masks change (every per-weight state tensor of the
    optimizer shaped like the weight, e.g. AdamW's exp_avg and exp_avg_sq).
    """

    def __init__(self, params, masks: dict[str, torch.Tensor] | None = None):
        self.params = named_tensors(params)
        self.masks: dict[str, torch.Tensor] = {}
        if masks:
            self.update(masks)

    def update(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = {n: masks[n].to(t.device) for n, t in self.params if n in masks}

    @torch.no_grad()
    def zero_weights(self) -> None:
        for n, t in self.params:
            if n in self.masks:
                t.mul_(self.masks[n])

    @torch.no_grad()
    def zero_grads(self) -> None:
        for n, t in self.params:
            if n in self.masks and t.grad is not None:
                t.grad.mul_(self.masks[n])

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        for n, t in self.params:
            state = optimizer.state.get(t, {}) if n in self.masks else {}
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == t.shape:
                    value.mul_(self.masks[n])

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros in the tracked tensors now (measured on the weights)."""
        total = sum(t.numel() for _, t in self.params)
        return sum(int((t == 0).sum()) for _, t in self.params) / total if total else 0.0


@dataclass
class GradualRun:
    """What a gradual run did: keep-masks, the FisherPruner (None for magnitude / fixed masks),
    one dict per pruning step {step, target, sparsity, seconds}, the training loss per step,
    seconds spent training (forward/backward/optimizer) and pruning (fresh gradients included),
    and the peak resident memory of the run (CPU; bytes)."""

    masks: dict[str, torch.Tensor]
    pruner: FisherPruner | None
    prune_steps: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    prune_seconds: float = 0.0
    peak_bytes: int = 0

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.prune_seconds


class _Pruning:
    """One method's pruning events in the loop: ``wants_grads(t)``, ``add_grads()``, ``prune_at(t)`` -> keep-masks or None."""

    plan: list[tuple[int, float]] = []
    pruner: FisherPruner | None = None

    def wants_grads(self, step: int) -> bool:
        return False

    def add_grads(self) -> None:  # pragma: no cover - only oBERT collects
        raise AssertionError

    def prune_at(self, step: int):
        return None


class _MagnitudePruning(_Pruning):
    def __init__(self, params, plan, pattern: str = "unstructured", global_sparsity: bool = True):
        self.params, self.plan, self.targets = params, plan, dict(plan)
        self.pattern, self.global_sparsity = pattern, global_sparsity

    def prune_at(self, step: int):
        if step not in self.targets:
            return None
        return magnitude_prune(self.params, self.targets[step], pattern=self.pattern, global_sparsity=self.global_sparsity)


class _ObertPruning(_Pruning):
    """FisherPruner on a GradualSchedule; gradients from the loop, or fresh (fisher_loss/batches)."""

    def __init__(self, model, params, plan, schedule_kwargs: dict, fisher_loss, fisher_batches, pruner_kwargs):
        self.model, self.plan, self.targets = model, plan, dict(plan)
        self.pruner = FisherPruner(params, **pruner_kwargs)
        self.fresh = fisher_loss is not None
        self.schedule = GradualSchedule(self.pruner, loss_fn=fisher_loss, batches=fisher_batches,
                                        model=model if self.fresh else None, **schedule_kwargs)
        self.tensors = [t for _, t in named_tensors(params)]

    def wants_grads(self, step: int) -> bool:
        nxt = next((t for t, _ in self.plan if t >= step), None)
        return (not self.fresh and nxt is not None and nxt - step < self.pruner.num_grads
                and self.pruner.num_collected < self.pruner.num_grads)

    def add_grads(self) -> None:
        self.pruner.add_grads()

    def prune_at(self, step: int):
        if step not in self.targets:
            return None
        was_training = self.model.training
        try:
            with grads_only_for(self.model, self.tensors):
                self.model.eval()  # fresh Fisher gradients without dropout, as one-shot draws them
                self.schedule.step(step)
        finally:
            self.model.train(was_training)
        return self.pruner.masks


def check_schedule(steps: int, sparsity: float, *, method: str = "obs", init_sparsity: float = 0.0, prune_start: int = 0,
                   prune_end: int | None = None, update_every: int | None = None, fresh_grads: bool = True,
                   num_grads: int | None = None) -> tuple[list[tuple[int, float]], int, int]:
    """Check a gradual schedule against the steps before any training; returns (plan, prune_end, update_every).

    Defaults: prune_end = 2/5 of the steps (``PRUNE_END_FRACTION``; the rest recovers with masks fixed),
    update_every = the pruning span / 9 (10 pruning steps). ValueError, saying what to change,
    when: the method is unknown, sparsity is outside [init_sparsity, 1), the pruning does not
    end before the last step, the schedule prunes nothing, or (gradients from the training
    loop, fresh_grads False) the loop cannot give num_grads gradients before a pruning step.
    """
    if method not in GRADUAL_METHODS:
        raise ValueError(f"method must be one of {GRADUAL_METHODS}, got {method!r}")
    if not 0.0 <= init_sparsity <= sparsity < 1.0:
        raise ValueError(f"need 0 ≤ init_sparsity ≤ sparsity < 1, got {init_sparsity}, {sparsity}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    prune_end = prune_end_step(PRUNE_END_FRACTION, steps) if prune_end is None else prune_end
    if not 0 <= prune_start <= prune_end:
        raise ValueError(f"need 0 ≤ prune_start ≤ prune_end, got {prune_start}, {prune_end}")
    if prune_end >= steps - 1:
        raise ValueError(f"the last pruning step ({prune_end}) must come before the last training step ({steps - 1}), "
                         "so the masks get at least one step of recovery: raise the steps")
    update_every = update_every or max((prune_end - prune_start) // 9, 1)
    if update_every < 1:
        raise ValueError(f"update_every must be ≥ 1, got {update_every}")
    plan = plan_pruning_steps(prune_start, prune_end, update_every, init_sparsity, sparsity)
    if not plan:
        raise ValueError("the schedule prunes nothing: raise the sparsity or the steps")
    if method != "magnitude" and not fresh_grads and num_grads is not None:
        if len(plan) > 1 and update_every < num_grads:
            raise ValueError(f"update_every ({update_every}) < num_grads ({num_grads}): the training loop cannot supply "
                             "enough gradients between pruning steps; draw them fresh (fisher_loss and fisher_batches), "
                             "raise the steps or lower num_grads")
        if plan[0][0] + 1 < num_grads:
            raise ValueError(f"the first pruning step ({plan[0][0]}) comes before the training loop has given num_grads "
                             f"({num_grads}) gradients: start pruning later or draw them fresh")
    return plan, prune_end, update_every


def gradual_prune(
    model: nn.Module,
    params,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    batches: Iterable,
    sparsity: float,
    steps: int,
    *,
    method: str = "obs",
    init_sparsity: float = 0.0,
    prune_start: int = 0,
    prune_end: int | None = None,
    update_every: int | None = None,
    fisher_loss: Callable | None = None,
    fisher_batches: Iterable | None = None,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.0,
    train_params=None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
    pattern: str = "unstructured",
    global_sparsity: bool = True,
    **pruner_kwargs,
) -> GradualRun:
    """Fine-tune ``model`` for ``steps`` steps on ``loss_fn`` while pruning ``params`` to ``sparsity``.

    loss_fn(model, batch) -> scalar, on batches drawn from ``batches`` (one per step; may be
    endless). The schedule: pruning steps prune_start, prune_start + update_every, ...,
    prune_end (default: 2/5 of the steps, so the rest recovers with masks fixed;
    update_every default: 10 pruning steps), cubic from init_sparsity to sparsity; steps
    whose cubic target is 0 are skipped. pattern/global_sparsity: as FisherPruner's (both
    methods); pruner_kwargs go to FisherPruner. Raises ValueError before training when the
    schedule does not fit the steps. Returns a GradualRun.
    """
    if (fisher_loss is None) != (fisher_batches is None):
        raise ValueError("pass both fisher_loss and fisher_batches (fresh Fisher gradients) or neither")
    plan, prune_end, update_every = check_schedule(
        steps, sparsity, method=method, init_sparsity=init_sparsity, prune_start=prune_start, prune_end=prune_end,
        update_every=update_every, fresh_grads=fisher_loss is not None,
        num_grads=pruner_kwargs.get("num_grads", 1024))
    params = named_tensors(params)
    if method == "magnitude":
        pruning: _Pruning = _MagnitudePruning(params, plan, pattern, global_sparsity)
    else:
        schedule_kwargs = dict(init_sparsity=init_sparsity, final_sparsity=sparsity, start_step=prune_start,
                               end_step=prune_end, update_every=update_every, progress=progress)
        pruning = _ObertPruning(model, params, plan, schedule_kwargs, fisher_loss, fisher_batches,
                                dict(pruner_kwargs, update=method, pattern=pattern, global_sparsity=global_sparsity))
    return _train(model, params, loss_fn, batches, steps, pruning, progress=progress, optimizer=optimizer,
                  train_params=train_params, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                  final_lr_fraction=final_lr_fraction)


def finetune_with_masks(model: nn.Module, params, masks: dict[str, torch.Tensor] | None, loss_fn, batches, steps: int, *,
                        lr: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 0, final_lr_fraction: float = 0.0,
                        train_params=None, optimizer=None, progress: bool = True) -> GradualRun:
    """The same fine-tuning as ``gradual_prune`` with fixed keep-masks (None: no pruning, dense):
    recovery after a one-shot prune, and the dense baseline for what pruning adds to the time."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    pruning = _Pruning()
    run = _train(model, named_tensors(params), loss_fn, batches, steps, pruning, progress=progress, optimizer=optimizer,
                 train_params=train_params, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                 final_lr_fraction=final_lr_fraction, masks=masks)
    return run


def _train(model, params, loss_fn, batches, steps, pruning: _Pruning, *, progress, optimizer, train_params, lr,
           weight_decay, warmup_steps, final_lr_fraction, masks=None) -> GradualRun:
    """The loop: backward, (Fisher gradients), masked grads, optimizer step, LR step, masks, pruning."""
    from tqdm.auto import tqdm

    if optimizer is None:
        trainable = [p for p in (model.parameters() if train_params is None else train_params) if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, steps, warmup_steps, final_lr_fraction))
    keeper = MaskKeeper(params, masks)
    keeper.zero_weights()
    run = GradualRun(masks=keeper.masks, pruner=pruning.pruner)
    batch_iter = iter(batches)
    reset_peak_rss()
    model.train()
    with tqdm(total=steps, desc="fine-tune", unit="step", disable=not progress) as bar:
        for t in range(steps):
            start = time.perf_counter()
            try:
                batch = next(batch_iter)
            except StopIteration:
                raise ValueError(f"batches ran out at step {t} of {steps}: pass more batches or an endless iterable") from None
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            if pruning.wants_grads(t):
                pruning.add_grads()
            keeper.zero_grads()
            optimizer.step()
            scheduler.step()
            keeper.zero_weights()
            run.losses.append(float(loss.detach()))
            run.train_seconds += time.perf_counter() - start
            _maybe_prune(pruning, t, keeper, optimizer, run, bar)
            bar.set_postfix(loss=f"{run.losses[-1]:.4g}", refresh=False)
            bar.update(1)
    run.masks = keeper.masks
    run.peak_bytes = peak_rss()
    model.eval()
    return run


def _maybe_prune(pruning: _Pruning, t: int, keeper: MaskKeeper, optimizer, run: GradualRun, bar) -> None:
    start = time.perf_counter()
    masks = pruning.prune_at(t)
    if masks is None:
        return
    keeper.update(masks)
    keeper.zero_weights()
    keeper.zero_optimizer_state(optimizer)
    seconds = time.perf_counter() - start
    run.prune_seconds += seconds
    target = dict(pruning.plan)[t]
    measured = keeper.sparsity
    run.prune_steps.append({"step": t, "target": target, "sparsity": measured, "seconds": seconds})
    if not bar.disable:
        bar.write(f"step {t}: pruned to {measured:.2%} (target {target:.2%}) in {seconds:.1f} s")
