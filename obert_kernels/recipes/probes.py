"""Label-free Fisher: the sampled Gauss-Newton probe, and the model-sampled Fisher for classifiers.

A model with no labels (a sentence encoder, a feature extractor) has no loss whose
gradients give an empirical Fisher. What pruning should preserve is its outputs z(w):
the curvature of ½‖z(w) − z(w₀)‖² at the dense weights w₀ is the Gauss-Newton matrix JᵀJ
(J = ∂z/∂w). One gradient sample of it is the gradient of

    loss = Σᵢ εᵢ · zᵢ,   εᵢ ~ N(0, I) drawn fresh for every gradient,

since g = Jᵀε has E[g gᵀ] = Jᵀ E[εεᵀ] J = JᵀJ. Feeding these g to FisherPruner gives F ≈
JᵀJ (summed over the batch's samples), with no labels and no target network.

Measured on all-MiniLM-L6-v2 (issue 6): it beats a contrastive (SimCSE) loss by far, whose
gradients are so small that damp had to drop to ~1e-12 and Cholesky then failed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.arguments import as_int, check_callable

__all__ = ["gauss_newton_loss", "GaussNewtonProbe", "sampled_label_loss", "SampledFisherProbe"]


def gauss_newton_loss(outputs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Σ ε ⊙ outputs with fresh ε ~ N(0, I) of the outputs' shape: a scalar whose gradient samples JᵀJ.

    outputs: any shape, floating point, on any device (the generator, if given, must live
    on that device). ε is drawn in float32 and cast, so fp16/bf16 outputs get the same draws.
    """
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        raise TypeError("gauss_newton_loss needs a floating-point tensor of outputs")
    eps = torch.randn(outputs.shape, generator=generator, device=outputs.device, dtype=torch.float32)
    return (eps.to(outputs.dtype) * outputs).sum()


class GaussNewtonProbe:
    """A ``loss_fn(model, batch)`` for FisherPruner / one_shot_prune: the probe over ``forward``'s outputs.

    forward(model, batch) -> outputs, e.g. sentence embeddings (n, h) or logits.
    seed: draws ε from a generator seeded once (reproducible Fisher); None uses the global RNG.
    """

    def __init__(self, forward: Callable[[nn.Module, object], torch.Tensor], seed: int | None = 0):
        check_callable("forward", forward, "forward(model, batch) -> outputs")
        self.forward = forward
        self.seed = None if seed is None else as_int("seed", seed)
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        outputs = self.forward(model, batch)
        return gauss_newton_loss(outputs, self._generator(outputs.device))


def sampled_label_loss(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """CE(logits, y) summed over the batch, y ~ softmax(logits) drawn per row: a scalar whose
    gradient samples the model's own Fisher (the true Fisher of a classifier, not the empirical one).

    logits: (n, C) floating point (any leading shape; the last is the classes). The labels
    are drawn from the detached probabilities in float32 with ``generator`` (on logits' device).
    Summed, not averaged, as ``gauss_newton_loss``: E[g gᵀ] then sums the samples' Fishers.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise TypeError("sampled_label_loss needs floating-point logits (..., C)")
    flat = logits.reshape(-1, logits.shape[-1])
    probs = torch.softmax(flat.detach().float(), dim=-1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return nn.functional.cross_entropy(flat, labels, reduction="sum")


class SampledFisherProbe(GaussNewtonProbe):
    """A ``loss_fn(model, batch)``: cross-entropy against labels drawn from the model's own softmax.

    forward(model, batch) -> logits (n, C). seed: labels drawn from a generator seeded once
    (reproducible Fisher); None uses the global RNG. The Gauss-Newton probe's sibling: for
    softmax cross-entropy, E_y[g gᵀ] is the Gauss-Newton matrix Jᵀ(diag p − p pᵀ)J; with the
    data's labels instead (the empirical Fisher) the outer products follow the labels, which
    a well-trained model already fits (measured on the digits CNN: README, "Damping").
    """

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        logits = self.forward(model, batch)
        return sampled_label_loss(logits, self._generator(logits.device))
