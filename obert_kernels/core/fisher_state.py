"""The Fisher state of one prune step: this rank's blocks, what they hold, and the gradient buffer.

``FisherState.kind`` says what ``blocks`` hold at any moment, instead of a flag:

- ``EMPTY``: zeros, no gradient applied yet;
- ``FISHER_SUM``: Σ g gᵀ / m over the gradients applied so far (the direct build, which
  inverts once, at ``finalize``);
- ``INVERSE``: F⁻¹ (the Woodbury build from its first chunk on, each chunk a rank-k update;
  the direct build after ``finalize``).

``FisherBuild`` pairs the state with its ``GradBuffer`` and applies full chunks (flush).
Every mutable field of a step lives in plain fields of these two objects (the pruner's
other state: ``PrunedMasks``, its history and the damping policy's choice), so that a
transaction can copy them and put them back as a whole (not done here: issue 14).
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from .config import PrunerConfig
from .damping import BlockLayout
from .grad_buffer import GradBuffer

__all__ = ["FisherKind", "FisherState", "FisherBuild"]

LayoutFn = Callable[[], BlockLayout]


class FisherKind(enum.Enum):
    EMPTY = "empty"
    FISHER_SUM = "fisher sum"
    INVERSE = "inverse"


@dataclass
class FisherState:
    """blocks: (num_blocks, B, B) float32, or packed upper triangles (num_blocks, B(B+1)/2)
    (ops/packed.py); what they hold: ``kind``."""

    blocks: torch.Tensor
    kind: FisherKind = FisherKind.EMPTY

    @classmethod
    def zeros(cls, num_blocks: int, block_size: int, device, packed: bool) -> "FisherState":
        if packed:
            return cls(torch.zeros(num_blocks, ops.packed.packed_size(block_size), device=device))
        return cls(torch.zeros(num_blocks, block_size, block_size, device=device))

    def apply_chunk(self, chunk: torch.Tensor, config: PrunerConfig, layout: LayoutFn) -> None:
        """Apply a chunk (num_blocks, k, B) of gradients with the configured build.

        Woodbury: the damping sets F₀⁻¹ = diag(1/λ) at the first chunk (a relative λ needs
        it), then a rank-k update. Every rank takes part, even one owning no block: the
        damping's per-tensor statistics are collectives when sharded.
        """
        has_blocks = self.blocks.shape[0] > 0
        if config.fisher_method == "woodbury":
            if self.kind is FisherKind.EMPTY:
                config.damping.start_woodbury(self.blocks, chunk, layout())
                self.kind = FisherKind.INVERSE
            if has_blocks:
                ops.woodbury_update(self.blocks, chunk, config.num_grads, backend=config.backend)
        else:
            if has_blocks:
                ops.fisher_accumulate(self.blocks, chunk, config.num_grads, backend=config.backend)
            self.kind = FisherKind.FISHER_SUM

    def fit_damping(self, heldout: torch.Tensor, config: PrunerConfig, layout: BlockLayout, step=None) -> None:
        """Direct build, before ``invert``: the damping sees the held-out last chunk (num_blocks, h, B)
        and, if given, ``step()``: the prune step to come (``damping_cv.PruneStep``)."""
        config.damping.fit(self.blocks, heldout, config.num_grads, layout, step)

    def invert(self, config: PrunerConfig, layout: BlockLayout) -> None:
        """FISHER_SUM -> INVERSE in place: blocks ← (Σ g gᵀ / m + λI)⁻¹."""
        config.damping.invert(self.blocks, layout, backend=config.backend)
        self.kind = FisherKind.INVERSE

    def dense_copy(self, blocks: slice, block_size: int) -> torch.Tensor:
        """A dense copy of ``blocks``: (n, B, B) float32, whatever the storage."""
        out = self.blocks[blocks].clone()
        return ops.unpack_upper(out, block_size) if out.dim() == 2 else out


class FisherBuild:
    """The Fisher state of one prune step and its gradient buffer, on this rank."""

    def __init__(self, num_blocks: int, config: PrunerConfig, device):
        self.config = config
        self.fisher = FisherState.zeros(num_blocks, config.block_size, device, config.packed)
        self.grads = GradBuffer(num_blocks, config.chunk_size, config.block_size, device)

    @property
    def buffer(self) -> torch.Tensor | None:
        """The gradient buffer tensor, (num_blocks, k, B) float32 (None once freed)."""
        return self.grads.buffer

    @property
    def collected(self) -> int:
        return self.grads.collected

    @property
    def chunk_due(self) -> bool:
        """The buffer is full, or holds the last gradient of the estimate."""
        return self.grads.full or self.grads.collected == self.config.num_grads

    def flush(self, layout: LayoutFn) -> None:
        """Apply the buffered gradients, if any, to the Fisher state."""
        if self.grads.filled == 0:
            return
        self.fisher.apply_chunk(self.grads.chunk(), self.config, layout)
        self.grads.mark_applied()

    def finalize(self, layout: LayoutFn, step=None) -> torch.Tensor:
        """Flush, then make the state F⁻¹ (the direct build inverts here); frees the buffer.
        step: None, or a callable giving the prune step to come, for the damping to score
        (``damping_cv.PruneStep``; "auto" chooses λ by it). Returns the blocks, holding F⁻¹."""
        self.flush(layout)
        if self.fisher.kind is not FisherKind.INVERSE:
            blocks_layout = layout()  # every rank reaches this: the damping may sum per-tensor statistics over ranks
            self.fisher.fit_damping(self.grads.last_applied(), self.config, blocks_layout, step)
            self.grads.free()  # not needed past here: give its memory back before inverting
            self.fisher.invert(self.config, blocks_layout)
        self.grads.free()  # the buffer is not needed for scoring; give its memory back now
        return self.fisher.blocks
