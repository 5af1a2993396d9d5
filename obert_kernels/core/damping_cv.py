"""``AutoDamp``'s criterion: the prune step itself, cross-validated on held-out gradients.

For each candidate α, on a seeded sample of this rank's Fisher blocks:

1. F_rest = the Fisher of the m − k gradients that were not held out (k = the last chunk);
2. F⁻¹ = (F_rest + α·D·I)⁻¹ (D: the policy's mean diagonal, per tensor or global), float64;
3. the step's own selection and update on the sample, its target sparsity applied *within
   the sample*, globally or per tensor as the pruner selects, the weights pruned before counted:
   - update obs / joint / none: ``ops.obs_scores``, then the lowest scores (N:M: the best subset
     of every group), then ``ops.obs_update`` in that mode;
   - update="sequential" (SPEC §2d): each sampled block's greedy order and cumulative losses
     (``ops.sequential_order``), one threshold over them (``sequential_select.block_counts``;
     N:M: every candidate), then the joint update of the chosen prefixes ∪ the weights pruned
     before, as the pruner's own sequential step. (Before, the obs selection with the joint
     update stood in for it, so λ was tuned for another step. Digits CNN, 3 seeds, sequential
     with its default criterion, test accuracy with that stand-in → scored by itself: 74.2 →
     78.8% at 90% R = 1, 59.1 → 58.5% at 95% R = 8, 38.8 → 46.4% at 97% R = 8, where obs gets
     43.0%; the sequential step's criterion picks α ≈ 1e-6..1e-3 on most steps, obs's 1e-2..1.
     rel:0.01 still does better at 95% (77.0%). bench/results/sequential-digits-cnn-auto-
     seqscored-2026-11-30.txt against ...-auto-2026-11-30.txt and ...-rel001-2026-11-30.txt.)
4. the predicted loss increase of that step under the held-out gradients g_1..g_k alone:
   ½ Δwᵀ F_ho Δw = (1/2k) Σ_j (g_jᵀ Δw)², with g_jᵀΔw summed over the sample's blocks
   ("full": F_ho is not block-diagonal, so the correlations between blocks that the update
   ignores are charged) or per block ("block": F_ho's block diagonal only).

α with the least predicted increase wins. Small α fits Δw to directions of F_rest that the
held-out gradients do not share (over-fitting shows as a large held-out increase); large α
turns the step into magnitude pruning. Measurements behind the choice: README, "Damping".

Sharded: each rank scores its own sample; the selection within the sample sees every rank's
sampled scores (sequential: cumulative losses), gathered; the per-candidate sums (and, for
"full", the k per-gradient sums) are all-reduced, so every rank chooses the same α.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from ..ops.blocks import unit_size, units_per_block
from ..ops.patterns import Pattern
from . import sequential_select
from .selection import count_for
from .sharding import Shard, all_gather_flat

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


def _slice_inverses(fisher_rest: torch.Tensor, scale: torch.Tensor, fraction: float, slice_size: int):
    """Yield (sl, finv) per slice of the sample, one slice's F⁻¹ alive at a time: sl (≤ slice_size,)
    int64 indices into the sample; finv (len(sl), B, B) float32 of F_rest + fraction·D·I, or None
    where that is not positive definite."""
    idx = torch.arange(fisher_rest.shape[0], device=fisher_rest.device)
    for start in range(0, idx.numel(), slice_size):
        sl = idx[start : start + slice_size]
        yield sl, _inverse(fisher_rest[sl], fraction * scale[sl])


def _eye(n: int, B: int, device) -> torch.Tensor:
    """(n, B, B) float32 identity: stands in for a failed F⁻¹ so that every rank still reaches
    the selection's collective (the candidate loses anyway)."""
    return torch.eye(B, device=device).expand(n, B, B).contiguous()


def _obs_choice(step: PruneStep, fisher_rest, scale, pruned, tensor_index, fraction: float, slice_size: int):
    """update obs / joint / none: ((s, B) bool newly removed, failed). The scores of the whole
    sample first (the selection needs them all), then the lowest at the target (``_select``)."""
    s, B = step.weights.shape
    failed, scores = False, []
    for sl, finv in _slice_inverses(fisher_rest, scale, fraction, slice_size):
        failed |= finv is None
        scores.append(_scores(step, sl, finv if finv is not None else _eye(len(sl), B, scale.device), pruned[sl]))
    shape = (0, len(step.pattern.subsets)) if step.pattern.is_nm else (0,)
    all_scores = torch.cat(scores) if scores else torch.zeros(shape, dtype=torch.float32, device=scale.device)
    return _select(step, all_scores, tensor_index).view(s, B) & ~pruned & step.real, failed


def _sequential_orders(step: PruneStep, weights, fisher_rest, scale, pruned, fraction: float, slice_size: int):
    """Each sampled block's greedy order (s, U) int64 and cumulative losses (s, U) float32
    (``ops.sequential_order``; pruned weights and padding are never candidates), and failed.
    weights: (s, B) float32, zero where pruned."""
    s, B = weights.shape
    U = units_per_block(step.pattern, B)
    failed, orders, cums = False, [], []
    for sl, finv in _slice_inverses(fisher_rest, scale, fraction, slice_size):
        failed |= finv is None
        dead = (pruned[sl] | ~step.real[sl]).reshape(-1)
        order, cum = ops.sequential_order(weights[sl].reshape(-1), finv if finv is not None else _eye(len(sl), B, scale.device),
                                          step.pattern, dead, backend="torch")
        orders.append(order)
        cums.append(cum.float())
    if not orders:  # a rank that samples no block still takes part in the gather
        return torch.zeros(0, U, dtype=torch.long, device=scale.device), torch.zeros(0, U, device=scale.device), failed
    return torch.cat(orders), torch.cat(cums), failed


def _block_units(step: PruneStep, pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s,) int64 real units and (s,) int64 units already gone (every weight pruned, as
    ``sequential_select.pruned_units`` counts them) of each sampled block; pruned: (s, B) bool."""
    s, B = pruned.shape
    g = unit_size(step.pattern)
    return step.real.reshape(s, B // g, g).any(-1).sum(1), pruned.reshape(s, B // g, g).all(-1).sum(1)


def _counts_within(step: PruneStep, cum: torch.Tensor, tensor: torch.Tensor, real: torch.Tensor,
                   gone: torch.Tensor) -> torch.Tensor:
    """(n,) int64 removals per block: ``sequential_select.block_counts`` over these n blocks as if
    they were the model, each tensor's blocks together (as the pruner concatenates them).
    cum: (n, U) cumulative losses; tensor, real, gone: (n,) int64 tensor id, real units, units gone."""
    rows = {t: torch.nonzero(tensor == t).flatten() for t in tensor.unique().tolist()}
    per_tensor = sequential_select.block_counts(
        {t: cum[r] for t, r in rows.items()}, {t: int(real[r].sum()) for t, r in rows.items()},
        {t: int(gone[r].sum()) for t, r in rows.items()}, step.target, step.pattern, step.global_sparsity)
    counts = torch.zeros(tensor.numel(), dtype=torch.long, device=cum.device)
    for t, r in rows.items():
        counts[r] = per_tensor[t].to(counts.device)
    return counts


def _sequential_counts(step: PruneStep, cum: torch.Tensor, pruned: torch.Tensor, tensor_index: torch.Tensor) -> torch.Tensor:
    """(s,) int64 prefix length of each sampled block: one threshold over the sample's cumulative
    losses (cum: (s, U) float32) at the step's target within the sample (``_counts_within``).
    Sharded: over every rank's sample, gathered in one collective (rows of tensor id, real
    units, units gone and the U losses, float64), so every rank counts alike."""
    s, U = cum.shape
    real, gone = _block_units(step, pruned)
    rows = torch.cat([tensor_index[:, None], real[:, None], gone[:, None]], 1).double()
    rows, offset = torch.cat([rows, cum.double()], 1), 0
    if step.gather is not None:
        flat, offset = step.gather(rows.reshape(-1))
        rows, offset = flat.view(-1, U + 3), offset // (U + 3)
    counts = _counts_within(step, rows[:, 3:], rows[:, 0].long(), rows[:, 1].long(), rows[:, 2].long())
    return counts[offset : offset + s]


def _sequential_choice(step: PruneStep, weights, fisher_rest, scale, pruned, tensor_index, fraction: float,
                       slice_size: int):
    """update sequential (SPEC §2d): ((s, B) bool the chosen prefixes, newly removed, failed).
    The orders and losses of the whole sample first, then one threshold, then the prefixes."""
    s, B = weights.shape
    orders, cum, failed = _sequential_orders(step, weights, fisher_rest, scale, pruned, fraction, slice_size)
    counts = _sequential_counts(step, cum, pruned, tensor_index)
    return sequential_select.prefix_mask(orders, counts, step.pattern, s * B).view(s, B), failed


def _heldout_dots(step: PruneStep, weights, fisher_rest, heldout, scale, removed, mode: str, fraction: float,
                  slice_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((k,) Σ_blocks g_jᵀΔw, (k,) Σ_blocks (g_jᵀΔw)²) float64: Δw of ``ops.obs_update`` in ``mode``
    removing ``removed`` ((s, B) bool) from ``weights`` ((s, B) float32), slice by slice."""
    s, k, B = heldout.shape
    per_grad = torch.zeros(k, dtype=torch.float64, device=heldout.device)
    per_grad_blocks = torch.zeros(k, dtype=torch.float64, device=heldout.device)
    for sl, finv in _slice_inverses(fisher_rest, scale, fraction, slice_size):
        w = weights[sl].reshape(-1)
        new_w = ops.obs_update(w.clone(), finv, removed[sl].reshape(-1), step.pattern, mode, backend="torch")
        dw = (new_w - w).view(len(sl), B).double()
        dots = torch.einsum("skb,sb->sk", heldout[sl], dw)  # g_jᵀΔw per block
        per_grad += dots.sum(0)
        per_grad_blocks += (dots ** 2).sum(0)
    return per_grad, per_grad_blocks


def predicted_increase(step: PruneStep, fisher_rest: torch.Tensor, heldout: torch.Tensor, scale: torch.Tensor,
                       live: torch.Tensor, tensor_index: torch.Tensor, fraction: float, slice_size: int):
    """For one candidate α = ``fraction``, over the sampled blocks: ((k,) Σ_blocks g_jᵀΔw,
    (k,) Σ_blocks (g_jᵀΔw)², failed), float64; failed: F_rest + λI was not positive definite
    somewhere (the candidate loses; every rank still takes part in the collectives).

    step: the PruneStep restricted to the sample (``PruneStep.sample``); fisher_rest: (s, B, B)
    float64 F_rest of the sampled blocks; heldout: (s, k, B) float64; scale: (s,) float64 D;
    live: (s, B) bool; tensor_index: (s,) int64. Two passes over slices: the step's selection
    over the whole sample first (obs scores, or sequential orders and cumulative losses), then
    each slice's update, so no more than one slice's F⁻¹ is held. update="sequential": the joint
    update of the chosen prefixes ∪ the weights pruned before, from weights zero where pruned (as
    the pruner's). Collective when sharded (the selection).
    """
    s, k, B = heldout.shape
    pruned = ~live & step.real
    if step.update == "sequential":
        weights = step.weights.masked_fill(pruned, 0.0)
        new, failed = _sequential_choice(step, weights, fisher_rest, scale, pruned, tensor_index, fraction, slice_size)
        removed, mode = new | pruned, "joint"
    else:
        weights, mode = step.weights, step.update
        removed, failed = _obs_choice(step, fisher_rest, scale, pruned, tensor_index, fraction, slice_size)
    if failed:
        zeros = torch.zeros(k, dtype=torch.float64, device=heldout.device)
        return zeros, zeros.clone(), True
    return (*_heldout_dots(step, weights, fisher_rest, heldout, scale, removed, mode, fraction, slice_size), False)
