"""``AutoDamp``'s criterion: the prune step itself, cross-validated on held-out gradients.

For each candidate α, on a seeded sample of this rank's Fisher blocks:

1. F_rest = the Fisher of the m − k gradients that were not held out (k = the last chunk);
2. F⁻¹ = (F_rest + α·D·I)⁻¹ (D: the policy's mean diagonal, per tensor or global), float64;
3. the step's own selection (``ops.obs_scores``, then the lowest scores at the step's target
   sparsity *within the sample*, globally or per tensor as the pruner selects, the weights
   pruned before counted; N:M: the best subset of every group) and its own update
   (``ops.obs_update``; update="sequential" is scored as the joint update of the obs selection);
4. the predicted loss increase of that step under the held-out gradients g_1..g_k alone:
   ½ Δwᵀ F_ho Δw = (1/2k) Σ_j (g_jᵀ Δw)², with g_jᵀΔw summed over the sample's blocks
   ("full": F_ho is not block-diagonal, so the correlations between blocks that the update
   ignores are charged) or per block ("block": F_ho's block diagonal only).

α with the least predicted increase wins. Small α fits Δw to directions of F_rest that the
held-out gradients do not share (over-fitting shows as a large held-out increase); large α
turns the step into magnitude pruning. Measurements behind the choice: README, "Damping".

Sharded: each rank scores its own sample; the per-candidate sums (and, for "full", the k
per-gradient sums) are all-reduced, so every rank chooses the same α.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..ops.patterns import Pattern
from .selection import count_for

__all__ = ["PruneStep", "prune_step", "CRITERIA", "predicted_increase"]

CRITERIA = ("full", "block")


@dataclass
class PruneStep:
    """What the prune step about to run will do, for a damping policy that scores it.

    target: the step's sparsity; weights: (nb, B) float32, this rank's blocks' weights (0 at
    padding); real: (nb, B) bool, False at the padding of a tensor's last block.
    """

    target: float
    weights: torch.Tensor
    real: torch.Tensor
    pattern: Pattern
    update: str
    global_sparsity: bool

    def sample(self, idx: torch.Tensor) -> "PruneStep":
        """This step restricted to the blocks ``idx`` (selection then runs within them)."""
        return PruneStep(self.target, self.weights[idx], self.real[idx], self.pattern, self.update, self.global_sparsity)


def prune_step(pieces, weights, target: float, config, num_blocks: int, device) -> PruneStep:
    """The PruneStep of this rank: pieces (``sharding.Piece``), weights: name -> flat (d,) float32."""
    B = config.block_size
    w = torch.zeros(num_blocks * B, device=device)
    real = torch.zeros(num_blocks * B, dtype=torch.bool, device=device)
    for p in pieces:
        first = p.local_block * B
        w[first : first + p.stop - p.start] = weights[p.slot.name][p.weights]
        real[first : first + p.stop - p.start] = True
    return PruneStep(target, w.view(num_blocks, B), real.view(num_blocks, B), config.pattern, config.update,
                     config.global_sparsity)


def _inverse(f_rest: torch.Tensor, lam: torch.Tensor) -> torch.Tensor | None:
    """(f_rest + diag(lam))⁻¹ as float32, (s, B, B); None if a Cholesky fails (the candidate loses)."""
    a = f_rest.clone()
    a.diagonal(dim1=1, dim2=2).add_(lam[:, None])
    chol, info = torch.linalg.cholesky_ex(a)
    if bool(info.any()):
        return None
    return torch.cholesky_inverse(chol).float()


def _scores(step: PruneStep, sel: torch.Tensor, finv: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Unit scores of the sampled blocks (ops.obs_scores), −∞ where pruned before or padding."""
    w = step.weights[sel].reshape(-1)
    dead = (pruned | ~step.real[sel]).reshape(-1)
    return ops.obs_scores(w, finv, step.pattern, dead, backend="torch")


def _select(step: PruneStep, scores: torch.Tensor, tensor_index: torch.Tensor) -> torch.Tensor:
    """(s·B,) bool: what the step's selection takes within the sample (pruned before included)."""
    from . import selection  # the same functions the pruner selects with

    pattern = step.pattern
    if pattern.is_nm:
        return selection.select_nm(scores, pattern)
    g = pattern.group_size
    padding_units = (~step.real).reshape(-1, g).all(1)
    real_units = ~padding_units
    if step.global_sparsity:
        chosen = selection.select_lowest(scores, count_for(step.target, int(real_units.sum())) + int(padding_units.sum()))
    else:
        unit_tensor = tensor_index.repeat_interleave(step.weights.shape[1] // g)
        chosen = torch.zeros_like(real_units)
        for t in unit_tensor.unique().tolist():
            mine = torch.nonzero(unit_tensor == t).flatten()
            n = count_for(step.target, int(real_units[mine].sum())) + int(padding_units[mine].sum())
            chosen[mine] = selection.select_lowest(scores[mine], n)
    return selection.expand_groups(chosen & real_units, g)


def predicted_increase(step: PruneStep, fisher_rest: torch.Tensor, heldout: torch.Tensor, scale: torch.Tensor,
                       live: torch.Tensor, tensor_index: torch.Tensor, fraction: float, slice_size: int):
    """For one candidate α = ``fraction``: ((k,) Σ_blocks g_jᵀΔw, Σ_blocks Σ_j (g_jᵀΔw)²), float64,
    over the sampled blocks, or None if F_rest + λI is not positive definite.

    step: the PruneStep restricted to the sample (``PruneStep.sample``); fisher_rest: (s, B, B) float64 F_rest of the sampled blocks; heldout: (s, k, B) float64;
    scale: (s,) float64 D; live: (s, B) bool; tensor_index: (s,) int64.
    Two passes over slices: the scores of the whole sample first (the selection needs them
    all), then each slice's update, so no more than one slice's F⁻¹ is held.
    """
    s, k = heldout.shape[0], heldout.shape[1]
    idx = torch.arange(s, device=heldout.device)
    pruned = ~live & step.real
    scores = []
    for start in range(0, s, slice_size):
        sl = idx[start : start + slice_size]
        finv = _inverse(fisher_rest[sl], fraction * scale[sl])
        if finv is None:
            return None
        scores.append(_scores(step, sl, finv, pruned[sl]))
    chosen = _select(step, torch.cat(scores), tensor_index).view(s, -1) & ~pruned & step.real
    per_grad = torch.zeros(k, dtype=torch.float64, device=heldout.device)
    block_sum = 0.0
    mode = "joint" if step.update == "sequential" else step.update
    for start in range(0, s, slice_size):
        sl = idx[start : start + slice_size]
        finv = _inverse(fisher_rest[sl], fraction * scale[sl])
        w = step.weights[sl].reshape(-1)
        new_w = ops.obs_update(w.clone(), finv, chosen[sl].reshape(-1), step.pattern, mode, backend="torch")
        dw = (new_w - w).view(len(sl), -1).double()  # (slice, B)
        dots = torch.einsum("skb,sb->sk", heldout[sl], dw)  # g_jᵀΔw per block
        per_grad += dots.sum(0)
        block_sum += float((dots ** 2).sum())
    return per_grad, block_sum
