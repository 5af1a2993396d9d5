"""The direct build's inversion F -> F⁻¹, in place, slice by slice, resumable (issue 14).

A failed or interrupted inversion must not lose the collected gradients, and must not
cost a second F either (F is the largest allocation of a prune step: 1.27 GiB for
MiniLM at B = 32, tens of GB for BERT-base on a GPU). So:

- everything that can refuse runs before the first block changes: the damping's ``fit``
  (AutoDamp's choice) and the finiteness check of all of F (one aminmax pass);
- the damping's scale (what a relative λ is relative to) is computed once, from all of F,
  and kept with the choice the fit made, in an ``Inversion`` record;
- the blocks are then inverted ``INVERT_SLICE`` at a time, each slice copied to a scratch
  slice first and put back if its inversion raises (an interrupt included), and the record
  counts the slices done. Retrying resumes at the first slice not done, with the same λ, so
  the result is bit-identical to an uninterrupted inversion (blocks are independent).

What this gives up against inverting a copy of F: once the first slice is inverted, the
step's λ is fixed (``FisherPruner.damp = ...`` is refused until ``reset()``); before that
(a non-finite F, a failed fit) F is intact and another damp may be set.
Cost: one slice of scratch (4096·B² floats: 16 MiB at B = 32, 41 MB at B = 50) and one
copy of F in slices, small against the inversion itself (a copy of 191 MiB of F took
0.5 s against 5 s to invert it; d = 10⁶, B = 50, one thread, loaded machine, 2026-11-30).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import ops
from . import damping as policies
from .damping import BlockLayout, Damping

__all__ = ["Inversion", "start_inversion", "run_inversion"]


@dataclass
class Inversion:
    """An inversion under way: scale (nb,) float32 or None (absolute λ), the damping policy's
    fields after its fit (put back on a resume: a failed call's rollback reverts them), and
    the number of leading blocks already holding F⁻¹."""

    scale: torch.Tensor | None
    fitted: dict = field(default_factory=dict)
    done: int = 0


def start_inversion(fisher: torch.Tensor, damping: Damping, heldout: torch.Tensor | None, num_grads: int,
                    layout: BlockLayout, step=None) -> Inversion:
    """Check F, fit the damping (``step``: see ``Damping.fit``), fix its scale; nothing in
    ``fisher`` (nb, B, B) changes.

    Every rank calls it (the damping may sum statistics over ranks)."""
    damping.fit(fisher, heldout, num_grads, layout, step)
    scale = damping.block_scale(fisher, layout)
    # after the damping's collectives (sharded: a rank refusing before them would leave the
    # others waiting in an all-reduce), before any block changes
    ops.checks.check_finite_blocks(fisher)
    return Inversion(scale, dict(vars(damping)))


def run_inversion(fisher: torch.Tensor, damping: Damping, layout: BlockLayout, inversion: Inversion,
                  backend: str) -> None:
    """Invert ``fisher``'s blocks from ``inversion.done`` on, in place (see the module doc)."""
    vars(damping).update(inversion.fitted)
    scratch, step = None, policies.INVERT_SLICE  # read here: tests shrink it
    for start in range(inversion.done, fisher.shape[0], step):
        stop = min(start + step, fisher.shape[0])
        part = fisher[start:stop]
        if scratch is None:
            scratch = torch.empty_like(fisher[: min(step, fisher.shape[0])])
        backup = scratch[: stop - start]
        backup.copy_(part)
        try:
            policies.invert_blocks(damping, part, layout[start:stop], backend=backend, original=backup,
                                   scale=None if inversion.scale is None else inversion.scale[start:stop])
        except BaseException:
            part.copy_(backup)
            raise
        inversion.done = stop
