"""Masks to and from ``torch.nn.utils.prune``, so tooling that reads ``weight_mask`` sees them.

``export_masks(model, masks)`` attaches each keep-mask with ``prune.custom_from_mask``:
the module then holds ``weight_orig`` (a parameter) and ``weight_mask`` (a buffer), and
``weight`` is recomputed as their product before every forward, so pruned weights stay
zero through further training. ``make_permanent=True`` folds the mask in
(``prune.remove``) and leaves a plain ``weight`` with zeros. ``masks_from_modules``
reads the ``weight_mask`` buffers back.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["export_masks", "masks_from_modules"]


def _module_and_param(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, param = name.rpartition(".")
    try:
        module = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        raise KeyError(f"mask {name!r}: {model.__class__.__name__} has no submodule {mod_name!r}") from None
    return module, param


def export_masks(model: nn.Module, masks: dict[str, torch.Tensor], *, make_permanent: bool = False) -> list[str]:
    """Attach keep-masks (name -> bool, True = kept, as ``FisherPruner.masks``) through
    ``torch.nn.utils.prune.custom_from_mask``; returns the names done.

    Every name and shape is checked before anything is changed. A parameter that already
    carries a prune mask gets the new one combined with it (torch's PruningContainer).
    """
    plan = []
    for name, mask in masks.items():
        module, param = _module_and_param(model, name)
        current = getattr(module, param, None)
        if not isinstance(current, torch.Tensor):
            raise KeyError(f"mask {name!r}: {module.__class__.__name__} has no tensor {param!r}")
        if tuple(mask.shape) != tuple(current.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(current.shape)}")
        plan.append((name, module, param, mask))
    for name, module, param, mask in plan:
        prune.custom_from_mask(module, param, mask.to(device=getattr(module, param).device, dtype=torch.bool))
        if make_permanent:
            prune.remove(module, param)
    return [name for name, *_ in plan]


def masks_from_modules(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> bool keep-mask of every ``<param>_mask`` buffer that torch.nn.utils.prune left on ``model``."""
    out = {}
    for mod_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if buf_name.endswith("_mask") and hasattr(module, buf_name[: -len("_mask")] + "_orig"):
                param = buf_name[: -len("_mask")]
                out[f"{mod_name}.{param}" if mod_name else param] = buf.bool()
    return out
