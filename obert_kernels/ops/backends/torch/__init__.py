"""The pure-PyTorch backend: serves every call on every device (the fallback of ``auto``)."""
from __future__ import annotations

from ...dispatch import register
from .scores import obs_scores_torch
from .sequential import sequential_order_torch
from .update import obs_apply_torch, obs_update_torch
from .woodbury import fisher_accumulate_torch, fisher_invert_torch, woodbury_update_torch

__all__ = ["register_all"]


def register_all() -> None:
    register("woodbury_update", "torch", woodbury_update_torch)
    register("fisher_accumulate", "torch", fisher_accumulate_torch, one_write=True)  # one baddbmm_ on dense blocks
    register("fisher_invert", "torch", fisher_invert_torch)
    register("obs_scores", "torch", obs_scores_torch)
    register("obs_update", "torch", obs_update_torch)
    register("obs_apply", "torch", obs_apply_torch)
    register("sequential_order", "torch", sequential_order_torch)
