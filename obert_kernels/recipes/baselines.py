"""Magnitude pruning: the baseline oBERT is compared against, with the same patterns and selection."""
from __future__ import annotations

import torch

from ..core import selection
from ..core.arguments import check_flag, check_sparsity
from ..ops.patterns import parse_pattern
from ..core.pruner import named_tensors

__all__ = ["magnitude_scores", "magnitude_prune"]


def magnitude_scores(weight: torch.Tensor, pattern) -> torch.Tensor:
    """Squared magnitude per unit, shaped like obs_scores: (d,), (d/g,) or (d/M, C(M,N))."""
    pattern = parse_pattern(pattern)
    sq = weight.detach().reshape(-1).float() ** 2
    if pattern.group_size == 1:
        return sq
    groups = sq.reshape(-1, pattern.group_size)
    if not pattern.is_nm:
        return groups.sum(-1)
    return torch.stack([groups[:, list(s)].sum(-1) for s in pattern.subsets], dim=1)


@torch.no_grad()
def magnitude_prune(params, sparsity: float, pattern: str = "unstructured", global_sparsity: bool = True) -> dict[str, torch.Tensor]:
    """Zero the smallest weights of ``params`` (module, mapping or pairs) in place; returns keep-masks.

    sparsity: in [0, 1) (N:M: ignored, may be None; a number given must still be in [0, 1))."""
    pattern = parse_pattern(pattern)
    sparsity, global_sparsity = check_sparsity(sparsity, pattern), check_flag("global_sparsity", global_sparsity)
    named = named_tensors(params)
    scores = {n: magnitude_scores(t, pattern) for n, t in named}
    if pattern.is_nm:
        pruned = {n: selection.select_nm(s, pattern) for n, s in scores.items()}
    else:
        pick = selection.select_global if global_sparsity else selection.select_per_tensor
        pruned = {n: selection.expand_groups(u, pattern.group_size) for n, u in pick(scores, sparsity).items()}
    masks = {}
    for name, t in named:
        keep = ~pruned[name].reshape(t.shape)
        t.mul_(keep)
        masks[name] = keep
    return masks
