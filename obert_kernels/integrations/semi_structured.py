"""2:4 semi-structured sparsity: check the pattern anywhere, convert on a GPU.

A weight pruned with ``pattern="2:4"`` has, in every aligned group of 4 consecutive
weights along a row (the input dimension of a Linear weight), at least 2 zeros: the
layout NVIDIA's sparse tensor cores run. ``torch.sparse.to_sparse_semi_structured``
compresses such a weight so ``F.linear`` uses them; it runs only on CUDA GPUs (compute
capability ≥ 8.0), for some dtypes and shapes. ``conversion_reasons(weight)`` says, on
any device, why a weight cannot be converted there, and ``to_semi_structured(model)``
refuses with those reasons before it changes anything.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["nm_violations", "is_2to4", "conversion_reasons", "to_semi_structured", "SemiStructuredNotSupported"]


class SemiStructuredNotSupported(RuntimeError):
    """The weights cannot be converted here; ``reasons`` maps each weight to why."""

    def __init__(self, reasons: dict[str, list[str]]):
        self.reasons = reasons
        lines = [f"{name}: {'; '.join(r)}" for name, r in reasons.items()]
        super().__init__("cannot convert to 2:4 semi-structured sparse:\n  " + "\n  ".join(lines[:8])
                         + (f"\n  ... and {len(lines) - 8} more" if len(lines) > 8 else ""))


def nm_violations(weight: torch.Tensor, n: int = 2, m: int = 4) -> int:
    """Aligned groups of ``m`` consecutive weights along the last dim with fewer than ``n`` zeros."""
    if weight.dim() < 1 or weight.shape[-1] % m:
        raise ValueError(f"the last dimension ({tuple(weight.shape)}) must be a multiple of {m}")
    zeros = (weight.detach() == 0).reshape(-1, m).sum(-1)
    return int((zeros < n).sum())


def is_2to4(weight: torch.Tensor) -> bool:
    """True if every aligned group of 4 along each row has at least 2 zeros."""
    return weight.dim() == 2 and weight.shape[-1] % 4 == 0 and nm_violations(weight) == 0


def _target_class():
    """The subclass to_sparse_semi_structured will use: cuSPARSELt unless CUTLASS is forced."""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS else SparseSemiStructuredTensorCUSPARSELT


def conversion_reasons(weight: torch.Tensor) -> list[str]:
    """Why ``to_sparse_semi_structured(weight)`` cannot run here ([] = it can)."""
    reasons = []
    if weight.dim() != 2:
        return [f"only 2-D weights convert, got shape {tuple(weight.shape)}"]
    if weight.shape[-1] % 4 or not is_2to4(weight):
        bad = nm_violations(weight) if weight.shape[-1] % 4 == 0 else "all"
        reasons.append(f"not 2:4 sparse along rows ({bad} groups of 4 have fewer than 2 zeros): prune with pattern='2:4'")
    if not weight.is_cuda:
        reasons.append(f"the weight is on {weight.device}: to_sparse_semi_structured runs only on CUDA GPUs "
                       "(sparse tensor cores, compute capability >= 8.0); move the model to a GPU first")
        return reasons
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        reasons.append(f"{torch.cuda.get_device_name(weight.device)} has compute capability {major}.{minor}; "
                       "2:4 sparse tensor cores need >= 8.0 (Ampere or newer)")
    try:
        cls = _target_class()
    except ImportError as exc:  # pragma: no cover - torch without the semi-structured subclasses
        return reasons + [f"this torch has no semi-structured sparse tensors ({exc})"]
    if cls.BACKEND == "cusparselt" and not torch.backends.cusparselt.is_available():
        reasons.append("cuSPARSELt is not available in this torch build (set "
                       "torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = True to use CUTLASS)")
    limits = cls._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if limits is None:
        reasons.append(f"dtype {weight.dtype} is not supported by the {cls.BACKEND} backend "
                       f"({', '.join(str(d) for d in cls._DTYPE_SHAPE_CONSTRAINTS)}): cast the model, e.g. .half()")
    else:
        rows, cols = weight.shape
        r, c = limits.sparse_min_rows, limits.sparse_min_cols
        if rows < r or rows % r or cols < c or cols % c:
            reasons.append(f"shape {tuple(weight.shape)} must be multiples of ({r}, {c}) for {weight.dtype} on {cls.BACKEND}")
    return reasons


def _linear_weights(model: nn.Module, names) -> list[tuple[str, nn.Linear]]:
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            name = f"{mod_name}.weight" if mod_name else "weight"
            if names is None or name in names:
                out.append((name, mod))
    if names is not None:
        missing = set(names) - {n for n, _ in out}
        if missing:
            raise KeyError(f"not Linear weights of this model: {sorted(missing)[:3]}")
    return out


@torch.no_grad()
def to_semi_structured(model: nn.Module, names=None) -> list[str]:
    """Replace 2:4-sparse Linear weights with ``to_sparse_semi_structured`` tensors (inference only).

    names: which weights ("layer.weight"), e.g. ``FisherPruner.masks`` keys; None: every
    Linear weight. All are checked first; if any cannot convert here, raises
    SemiStructuredNotSupported (listing each one's reasons) and changes nothing.
    Returns the names converted.
    """
    targets = _linear_weights(model, None if names is None else set(names))
    problems = {name: r for name, mod in targets if (r := conversion_reasons(mod.weight))}
    if problems:
        raise SemiStructuredNotSupported(problems)
    from torch.sparse import to_sparse_semi_structured

    for _, mod in targets:
        mod.weight = nn.Parameter(to_sparse_semi_structured(mod.weight.detach().contiguous()), requires_grad=False)
    return [name for name, _ in targets]
