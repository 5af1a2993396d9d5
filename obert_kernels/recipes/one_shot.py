"""One-shot pruning of a model: gradients from a loss, then FisherPruner.prune (SPEC §3)."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..core import arguments
from ..core.pruner import FisherPruner

__all__ = ["one_shot_prune", "recomputation_targets", "collect_grads"]


def recomputation_targets(start: float, target: float, steps: int) -> list[float]:
    """s_r = s₀ + (s − s₀)·r/R for r = 1..R (SPEC §3, recomputation)."""
    steps = arguments.check_positive_int("num_recomputations", steps)
    return [start + (target - start) * r / steps for r in range(1, steps + 1)]


def collect_grads(pruner: FisherPruner, model: nn.Module, loss_fn: Callable, batch_iter, *, progress: bool = True, desc: str = "gradients") -> None:
    """Draw batches until the pruner holds ``num_grads`` gradients: backward each loss, add its grads."""
    from tqdm.auto import tqdm

    needed = pruner.num_grads - pruner.num_collected
    with torch.enable_grad(), tqdm(total=needed, desc=desc, disable=not progress, leave=False, unit="grad") as bar:
        try:
            for _ in range(needed):
                _add_one(pruner, model, loss_fn, batch_iter)
                bar.update(1)
        finally:  # no .grad left behind, whether the batches ran out or not
            model.zero_grad(set_to_none=True)


def _add_one(pruner: FisherPruner, model: nn.Module, loss_fn: Callable, batch_iter) -> None:
    try:
        batch = next(batch_iter)
    except StopIteration:
        raise ValueError(
            f"batches ran out with {pruner.num_collected} of {pruner.num_grads} gradients collected: "
            "pass more batches or an endless iterable"
        ) from None
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("loss_fn(model, batch) must return a scalar tensor")
    loss.backward()
    pruner.add_grads()


def one_shot_prune(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    batches: Iterable,
    sparsity: float,
    *,
    num_recomputations: int = 1,
    progress: bool = True,
    **pruner_kwargs,
) -> FisherPruner:
    """Prune ``model``'s Linear/Conv weights to ``sparsity`` in one shot (in place).

    loss_fn(model, batch) -> scalar loss; batches: any iterable (may be endless), from
    which num_grads fresh batches are drawn for each of the ``num_recomputations`` steps.
    pruner_kwargs go to FisherPruner. Returns the pruner: ``.masks``, ``.history``
    (one PruneReport per step).

    All or nothing: if any step fails (the batches run out, loss_fn raises, an interrupt),
    the tracked weights are put back as they were before the call and the exception
    propagates; the call can be retried with fresh batches. Cost: a copy of the tracked
    weights (in their dtype) for the duration of the call.
    """
    arguments.check_one_shot_args(loss_fn, batches, sparsity, num_recomputations, progress)
    pruner = FisherPruner(model, **pruner_kwargs)
    target = pruner.check_sparsity(sparsity)
    steps = recomputation_targets(pruner.sparsity, target, num_recomputations)
    batch_iter = iter(batches)
    with pruner.transaction():
        for r, step_target in enumerate(steps, 1):
            collect_grads(pruner, model, loss_fn, batch_iter, progress=progress,
                          desc=f"gradients {r}/{len(steps)}" if len(steps) > 1 else "gradients")
            pruner.prune(step_target)
    return pruner
