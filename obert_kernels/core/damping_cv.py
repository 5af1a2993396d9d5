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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from ..ops.patterns import Pattern
from .selection import count_for
from .sharding import Shard, all_gather_flat

__all__ = ["PruneStep", "prune_step", "CRITERIA", "predicted_increase"]

CRITERIA = ("full", "block")
# The sample's F⁻¹ (float32) kept between the two passes of ``predicted_increase`` up to this
# size (4096 blocks of B = 32: 16 MiB; of B = 64: 64 MiB): the two Cholesky inversions per
# block and candidate were 6.4 of the 10.1 s the fit took in a MiniLM prune step (m = 128,
# one thread, loaded machine, cProfile, 2026-11-30); keeping them halves that.
KEEP_INVERSES_BYTES = 64 << 20


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
    gather: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None = None  # sharded: see ``gatherer``

    def sample(self, idx: torch.Tensor) -> "PruneStep":
        """This step restricted to the blocks ``idx`` (selection then runs within them)."""
        return PruneStep(self.target, self.weights[idx], self.real[idx], self.pattern, self.update, self.global_sparsity,
                         self.gather)


def gatherer(shard: Shard):
    """None on one process; when sharded, gather(local 1-D) -> (every rank's, concatenated in rank
    order; this rank's offset in it): the selection within the sample then sees every rank's
    sampled scores, as the pruner's own selection sees every rank's scores. Collective."""
    if not shard.distributed:
        return None

    def gather(local: torch.Tensor) -> tuple[torch.Tensor, int]:
        sizes = all_gather_flat(shard, torch.tensor([local.numel()], dtype=torch.float64, device=local.device))
        return all_gather_flat(shard, local).to(local.device), int(sizes[: shard.rank].sum())

    return gather


def prune_step(pieces, weights, target: float, config, num_blocks: int, device, shard: Shard) -> PruneStep:
    """The PruneStep of this rank: pieces (``sharding.Piece``), weights: name -> flat (d,) float32."""
    B = config.block_size
    w = torch.zeros(num_blocks * B, device=device)
    real = torch.zeros(num_blocks * B, dtype=torch.bool, device=device)
    for p in pieces:
        first = p.local_block * B
        w[first : first + p.stop - p.start] = weights[p.slot.name][p.weights]
        real[first : first + p.stop - p.start] = True
    return PruneStep(target, w.view(num_blocks, B), real.view(num_blocks, B), config.pattern, config.update,
                     config.global_sparsity, gatherer(shard))


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


def _select_units(step: PruneStep, scores: torch.Tensor, real_units: torch.Tensor, unit_tensor: torch.Tensor) -> torch.Tensor:
    """Bool unit mask of what the selection takes among these units: the lowest scores at the
    target, globally or per tensor; −∞ scores (pruned before, padding) go first, padding not counted."""
    from . import selection  # the same function the pruner selects with

    tensors = [None] if step.global_sparsity else unit_tensor.unique().tolist()
    chosen = torch.zeros_like(real_units)
    for t in tensors:
        mine = torch.arange(real_units.numel(), device=real_units.device) if t is None else torch.nonzero(unit_tensor == t).flatten()
        n_real = int(real_units[mine].sum())
        chosen[mine] = selection.select_lowest(scores[mine], count_for(step.target, n_real) + mine.numel() - n_real)
    return chosen & real_units


def _select(step: PruneStep, scores: torch.Tensor, tensor_index: torch.Tensor) -> torch.Tensor:
    """(s·B,) bool: what the step's selection takes within the sample (pruned before included);
    sharded, within every rank's sample together (``PruneStep.gather``). Collective when sharded
    (except N:M, whose groups are selected on their own)."""
    from . import selection

    pattern = step.pattern
    if pattern.is_nm:
        return selection.select_nm(scores, pattern)
    g = pattern.group_size
    real_units = ~(~step.real).reshape(-1, g).all(1)
    unit_tensor = tensor_index.repeat_interleave(step.weights.shape[1] // g)
    if step.gather is None:
        chosen = _select_units(step, scores, real_units, unit_tensor)
    else:  # one ranking over every rank's sampled units, as the pruner's own selection
        all_scores, offset = step.gather(scores.double())
        all_real, _ = step.gather(real_units.double())
        all_tensor, _ = step.gather(unit_tensor.double())
        chosen = _select_units(step, all_scores, all_real > 0.5, all_tensor.long())[offset : offset + scores.numel()]
    return selection.expand_groups(chosen, g)


def predicted_increase(step: PruneStep, fisher_rest: torch.Tensor, heldout: torch.Tensor, scale: torch.Tensor,
                       live: torch.Tensor, tensor_index: torch.Tensor, fraction: float, slice_size: int):
    """For one candidate α = ``fraction``, over the sampled blocks: ((k,) Σ_blocks g_jᵀΔw,
    (k,) Σ_blocks (g_jᵀΔw)², failed), float64; failed: F_rest + λI was not positive definite
    somewhere (the candidate loses; every rank still takes part in the collectives).

    step: the PruneStep restricted to the sample (``PruneStep.sample``); fisher_rest: (s, B, B)
    float64 F_rest of the sampled blocks; heldout: (s, k, B) float64; scale: (s,) float64 D;
    live: (s, B) bool; tensor_index: (s,) int64. Two passes over slices: the scores of the
    whole sample first (the selection needs them all), then each slice's update. The first
    pass's F⁻¹ are kept for the second when they fit in ``KEEP_INVERSES_BYTES`` (else each
    slice's is computed again, and no more than one is held). Collective when sharded (``_select``).
    """
    s, k, B = heldout.shape
    idx = torch.arange(s, device=heldout.device)
    pruned = ~live & step.real
    failed, scores = False, []
    kept = [] if s * B * B * 4 <= KEEP_INVERSES_BYTES else None  # the first pass's F⁻¹, for the second
    for start in range(0, s, slice_size):
        sl = idx[start : start + slice_size]
        finv = _inverse(fisher_rest[sl], fraction * scale[sl])
        failed |= finv is None
        if kept is not None:
            kept.append(finv)
        # a failed F⁻¹ (the candidate loses) still scores with an identity, on the sample's device,
        # so that every rank reaches the selection's collective
        stand_in = finv if finv is not None else torch.eye(B, device=heldout.device).expand(len(sl), B, B).contiguous()
        scores.append(_scores(step, sl, stand_in, pruned[sl]))
    shape = (0, len(step.pattern.subsets)) if step.pattern.is_nm else (0,)
    all_scores = torch.cat(scores) if scores else torch.zeros(shape, dtype=torch.float32, device=heldout.device)
    chosen = _select(step, all_scores, tensor_index).view(s, B) & ~pruned & step.real
    per_grad = torch.zeros(k, dtype=torch.float64, device=heldout.device)
    per_grad_blocks = torch.zeros(k, dtype=torch.float64, device=heldout.device)
    mode = "joint" if step.update == "sequential" else step.update
    for n, start in enumerate(range(0, s if not failed else 0, slice_size)):
        sl = idx[start : start + slice_size]
        finv = kept[n] if kept is not None else _inverse(fisher_rest[sl], fraction * scale[sl])
        w = step.weights[sl].reshape(-1)
        new_w = ops.obs_update(w.clone(), finv, chosen[sl].reshape(-1), step.pattern, mode, backend="torch")
        dw = (new_w - w).view(len(sl), B).double()
        dots = torch.einsum("skb,sb->sk", heldout[sl], dw)  # g_jᵀΔw per block
        per_grad += dots.sum(0)
        per_grad_blocks += (dots ** 2).sum(0)
    return per_grad, per_grad_blocks, failed
