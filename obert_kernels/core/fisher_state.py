"""The Fisher state of one prune step: this rank's blocks, what they hold, and the gradient buffer.

``FisherState.kind`` says what ``blocks`` hold at any moment, instead of a flag:

- ``EMPTY``: zeros, no gradient applied yet;
- ``FISHER_SUM``: Σ g gᵀ / m over the gradients applied so far (the direct build, which
  inverts once, at ``finalize``);
- ``INVERSE``: F⁻¹ (the Woodbury build from its first chunk on, each chunk a rank-k update;
  the direct build after ``finalize``).

``FisherBuild`` pairs the state with its ``GradBuffer`` and applies full chunks (flush).
Every mutable field of a step lives in plain fields of these two objects (the pruner's
other state: ``PrunedMasks``, its history and the damping policy's choice); see
``transaction`` for how a failed call puts them back.

What a failure leaves (issue 14):

- A flush whose op writes the state in one call (``applies_in_one_write``: the direct build
  on dense blocks with the torch backend's one ``baddbmm_`` or the cpp backend's one C++
  call, the CPU's default) applies the whole chunk in that call, with no backup: such a call
  raises before it writes, or writes everything; a SIGINT that arrives meanwhile is held
  (``interrupts_held``) until the chunk is recorded as applied, so it never falls between the
  write and its record. Measured (issue 15, d = 10⁶, B = 50, m = 1024, 2 threads,
  2026-11-30): the sliced, backed-up flush below cost ~1 s more per 1,024 gradients than
  this (2,895 calls and 1 MiB copies per 512 gradients). The cpp backend adds to the upper
  triangles only (its kernel is registered ``upper_only``); ``FisherState.lower_stale`` says
  so until ``symmetrize`` mirrors them, once, before the sum is read (``finalize``,
  ``fisher_inverse``).
- Any other flush (Woodbury, packed storage but on the cpp backend, the GPU kernels) applies the chunk in slices of
  ``FLUSH_SLICE_BYTES`` of the Fisher state, each slice copied to a scratch slice first: a
  slice whose op raises (or is interrupted after it wrote) is put back from the copy, and
  the buffer's ``Counts.applied_blocks`` records the slices done, so the next flush resumes
  there. The state holds the same gradients as before
  the failed call and the result is bit-identical to an uninterrupted flush (blocks are
  independent). The slice is small so that the backup and the op's read of it hit the cache:
  the backup then costs almost nothing (MiniLM's blocks, B = 32, k = 32, one thread, CPU time,
  min of 9, loaded machine, 2026-11-30: 1 MiB slices 173 ms with the backup vs 179 without;
  4 MiB 222 vs 166; 16 MiB 220 vs 153, for a quarter of MiniLM's blocks). Scratch: one slice.
  The backend is resolved once per flush and the op told not to re-check the chunk's
  finiteness (``add_grads`` checked every gradient), so many small calls stay cheap.
  Not measured on a GPU, where the flush is memory-bound and the backup adds a read and a
  write of F to it.
- The direct build's inversion is in place and resumable (``inversion``): F is checked and
  the damping fitted before any block changes, then slices are inverted with a backup of
  the current one, so a failed prune is retried from where it stopped with the same λ, and
  a prune that failed after the inversion (scoring, update, write-back) reuses F⁻¹. Another
  damp can be set while no block has been inverted. An earlier version inverted a copy of
  F so that any failure could go back to F: one more F (d·B·4 bytes) for every prune.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from .config import PrunerConfig
from .damping import BlockLayout, Damping, parse_damp
from .grad_buffer import GradBuffer
from .interrupts import interrupts_held
from .inversion import Inversion, run_inversion, start_inversion

__all__ = ["FisherKind", "FisherState", "FisherBuild", "FLUSH_SLICE_BYTES", "FLUSH_SLICE_BYTES_ACCELERATOR",
           "applies_in_one_write", "flush_slice_bytes", "blocks_per_flush_slice",
           "flush_slice_blocks", "fits_on_heldout", "config_with_damp"]

LayoutFn = Callable[[], BlockLayout]
# Bytes of the Fisher state per step of a flush (each backed up to scratch first; see above).
# On a CPU small, for the cache; on a GPU large, as each slice is a few kernel launches (~10 µs
# each) and the whole flush of MiniLM's 1.4 GB state is ~1 ms of bandwidth (not measured on a GPU).
FLUSH_SLICE_BYTES = 1 << 20
FLUSH_SLICE_BYTES_ACCELERATOR = 64 << 20


def flush_slice_bytes(device) -> int:
    """Bytes of the Fisher state per flush slice on ``device``."""
    return FLUSH_SLICE_BYTES if torch.device(device).type == "cpu" else FLUSH_SLICE_BYTES_ACCELERATOR


def blocks_per_flush_slice(bytes_per_block: int, device) -> int:
    """Blocks per flush slice of a Fisher state of ``bytes_per_block`` on ``device``, at least one
    (also what core.memory counts the flush's scratch by)."""
    return max(1, flush_slice_bytes(device) // max(1, bytes_per_block))


def flush_slice_blocks(blocks: torch.Tensor) -> int:
    """Blocks per flush slice of ``blocks`` (num_blocks, ...)."""
    return blocks_per_flush_slice(blocks[:1].numel() * blocks.element_size(), blocks.device)


def applies_in_one_write(config: PrunerConfig, backend: str, blocks: torch.Tensor) -> bool:
    """Whether the flush's op writes ``blocks`` in one step, raising before it writes or
    writing everything (so the flush needs no backup; see the module doc): the direct build with
    a kernel registered ``one_write`` (torch's one ``baddbmm_``, cpp's one C++ call), on dense
    blocks or on packed ones it reads itself (others get packed blocks tile by tile). The
    Woodbury update is several writes."""
    impl = ops.dispatch.kernel("fisher_accumulate", backend)
    return config.fisher_method != "woodbury" and impl.one_write and (blocks.dim() == 3 or impl.packed)


def fits_on_heldout(damping: Damping) -> bool:
    """Whether ``damping.fit`` reads the held-out last chunk (AutoDamp), so the gradient
    buffer must outlive the inversion until the prune commits."""
    return type(damping).fit is not Damping.fit


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
    inversion: Inversion | None = None  # the direct build's inversion, once started (kept when done)
    # the strict lower triangles of dense blocks are stale: chunks were added to the upper ones
    # only (``upper_only``); ``symmetrize`` mirrors them before anything reads whole blocks
    lower_stale: bool = False

    @classmethod
    def zeros(cls, num_blocks: int, block_size: int, device, packed: bool) -> "FisherState":
        if packed:
            return cls(torch.zeros(num_blocks, ops.packed.packed_size(block_size), device=device))
        return cls(torch.zeros(num_blocks, block_size, block_size, device=device))

    def start_woodbury(self, first_chunk: torch.Tensor, config: PrunerConfig, layout: LayoutFn) -> None:
        """Woodbury: the damping sets F₀⁻¹ = diag(1/λ) from the first chunk (a relative λ needs
        it). It overwrites every block, so an interrupted start is simply done again. Every
        rank takes part, even one owning no block: the damping's per-tensor statistics are
        collectives when sharded."""
        config.damping.start_woodbury(self.blocks, first_chunk, layout())
        self.kind = FisherKind.INVERSE

    def apply_slice(self, blocks: slice, chunk: torch.Tensor, config: PrunerConfig, backend: str) -> None:
        """Apply ``chunk`` (n, k, B), the gradients of ``blocks`` (each already checked finite),
        with the configured build on ``backend`` (``flush_backend``)."""
        if config.fisher_method == "woodbury":
            ops.woodbury_update(self.blocks[blocks], chunk, config.num_grads, backend=backend, check_finite=False)
            return
        # a kernel registered upper_only adds to the upper triangles only, and the state mirrors
        # them once before the sum is read. cpp, 2026-11-30, two threads, median of 5 (d = 10⁶,
        # B = 50 | MiniLM's 10.6M weights, B = 32; k = 32): 48 vs 63 ms a chunk | 323 vs 403 ms;
        # the mirror (ops.mirror_upper) once a step: 0.07 | 0.40 s (torch's where; C++ since, on a
        # Xeon: 0.017 | 0.10 s against 0.053 | 0.35 s).
        upper_only = self.blocks.dim() == 3 and ops.dispatch.kernel("fisher_accumulate", backend).upper_only
        if upper_only:
            self.lower_stale = True  # before the write: an interrupted one leaves it stale too
        ops.fisher_accumulate(self.blocks[blocks], chunk, config.num_grads, backend=backend, check_finite=False,
                              upper_only=upper_only)

    def symmetrize(self) -> None:
        """Mirror the upper triangles into the stale lower ones (``lower_stale``), if any: before
        anything reads whole blocks of the sum (the damping's fit, the inversion, a copy)."""
        if self.lower_stale:
            ops.mirror_upper(self.blocks)
            self.lower_stale = False

    def flush_backend(self, chunk: torch.Tensor, config: PrunerConfig) -> str:
        """The backend every slice of this flush runs on: config.backend resolved once, for the
        whole state (slices differ only in their number of blocks)."""
        op = "woodbury_update" if config.fisher_method == "woodbury" else "fisher_accumulate"
        return ops.resolve_backend(op, config.backend, self.blocks, grads=chunk)

    def start_inversion(self, heldout: torch.Tensor | None, config: PrunerConfig, layout: BlockLayout,
                        step=None) -> None:
        """Direct build, before ``invert``: check F and fit the damping on the held-out last chunk
        (num_blocks, h, B) and, if given, ``step()``: the prune step to come
        (``damping_cv.PruneStep``); changes no block (see ``inversion``). Done once per step."""
        if self.inversion is None:
            if heldout is None and fits_on_heldout(config.damping):
                raise ValueError(f"damp={config.damp!r} chooses λ on the held-out last chunk of gradients, which "
                                 "is no longer kept: call reset() and collect the gradients again")
            self.inversion = start_inversion(self.blocks, config.damping, heldout, config.num_grads, layout, step)

    def invert(self, config: PrunerConfig, layout: BlockLayout) -> None:
        """FISHER_SUM -> INVERSE in place: blocks ← (Σ g gᵀ / m + λI)⁻¹, from where a failed call
        stopped (see ``inversion``)."""
        run_inversion(self.blocks, config.damping, layout, self.inversion, config.backend)
        self.kind = FisherKind.INVERSE

    @property
    def inversion_started(self) -> bool:
        """Whether a block already holds F⁻¹ on the direct build (λ is then fixed)."""
        return self.inversion is not None and (self.inversion.done > 0 or self.kind is FisherKind.INVERSE)

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
        self.scratch: torch.Tensor | None = None  # one slice of the Fisher state, the flush's backup

    @property
    def buffer(self) -> torch.Tensor | None:
        """The gradient buffer tensor, (num_blocks, k, B) float32 (None once freed)."""
        return self.grads.buffer

    @property
    def collected(self) -> int:
        return self.grads.collected

    def flush(self, layout: LayoutFn) -> None:
        """Apply the buffered gradients, if any, to the Fisher state: in one write where the op
        allows (``applies_in_one_write``), else slice by slice, each slice backed up first and
        put back if its op fails; either way a failed flush leaves the state holding the same
        gradients and the next flush resumes where it stopped (see the module doc)."""
        if self.grads.filled == 0:
            return
        chunk, fisher = self.grads.chunk(), self.fisher
        if self.config.fisher_method == "woodbury":
            if fisher.kind is FisherKind.EMPTY:
                fisher.start_woodbury(chunk, self.config, layout)
        else:
            fisher.kind = FisherKind.FISHER_SUM
        num_blocks, step = fisher.blocks.shape[0], flush_slice_blocks(fisher.blocks)
        backend = fisher.flush_backend(chunk, self.config)
        start = self.grads.counts.applied_blocks
        if start < num_blocks and applies_in_one_write(self.config, backend, fisher.blocks):
            with interrupts_held():  # never between the write and its record
                fisher.apply_slice(slice(start, num_blocks), chunk[start:], self.config, backend)
                self.grads.mark_progress(num_blocks)
        for start in range(self.grads.counts.applied_blocks, num_blocks, step):
            self._apply_slice(slice(start, min(start + step, num_blocks)), chunk, backend)
        self.grads.mark_applied()

    def _apply_slice(self, blocks: slice, chunk: torch.Tensor, backend: str) -> None:
        part = self.fisher.blocks[blocks]
        if self.scratch is None or self.scratch.shape[0] < part.shape[0]:
            self.scratch = torch.empty_like(self.fisher.blocks[: flush_slice_blocks(self.fisher.blocks)])
        backup = self.scratch[: part.shape[0]]
        backup.copy_(part)
        try:
            self.fisher.apply_slice(blocks, chunk[blocks], self.config, backend)
            self.grads.mark_progress(blocks.stop)
        except BaseException:
            if self.grads.counts.applied_blocks < blocks.stop:  # not recorded as applied: put it back
                part.copy_(backup)
            raise

    def finalize(self, layout: LayoutFn, step=None) -> torch.Tensor:
        """Flush, then make the state F⁻¹ (the direct build inverts in place here, see
        ``inversion``); frees the buffer as soon as nothing needs it (AutoDamp's fit reads the
        held-out last chunk). step: None, or a callable giving the prune step to come, for the
        damping to score (``damping_cv.PruneStep``; "auto" chooses λ by it). A retry after a
        failure resumes. Returns the blocks, holding F⁻¹."""
        self.flush(layout)
        self.scratch = None
        fisher = self.fisher
        if fisher.kind is not FisherKind.INVERSE:
            fisher.symmetrize()
            blocks_layout = layout()  # every rank reaches this: the damping may sum per-tensor statistics over ranks
            if not fits_on_heldout(self.config.damping):
                self.grads.free()  # not needed: give its memory back before fitting and inverting
            heldout = None if self.grads.buffer is None else self.grads.last_applied()
            fisher.start_inversion(heldout, self.config, blocks_layout, step)
            self.grads.free()
            fisher.invert(self.config, blocks_layout)
        elif fisher.inversion is not None:  # a retry after a failure past the inversion: λ as fitted
            vars(self.config.damping).update(fisher.inversion.fitted)
        self.grads.free()
        return fisher.blocks


def config_with_damp(config: PrunerConfig, damp, state: FisherBuild | None, device) -> PrunerConfig:
    """``config`` with another damp for the next inversion (``FisherPruner.damp = ...``).

    Allowed between steps, and while the step's Fisher is still a sum (the direct build: while
    collecting, or after a prune that failed before inverting a block). Refused (ValueError,
    nothing changed) on the Woodbury build once its first chunk fixed λ in F₀⁻¹, on the direct
    build once a failed prune() had started inverting (it resumes with its λ), and for a damping
    that fits on the held-out chunk (auto) once a failed prune freed it. k stays as it is while gradients are buffered.
    The step's ``state`` gets the new config too.
    """
    damping = parse_damp(damp, global_sparsity=config.global_sparsity)
    chunk_size = damping.chunk_size_for(config.num_grads, config.chunk_size)  # also checks what the policy needs
    if state is not None:
        chunk_size = config.chunk_size
        if state.fisher.inversion_started:
            raise ValueError("a failed prune() had already started inverting the Fisher blocks with its λ: call "
                             "prune() again (it resumes with that λ), or reset() (dropping the gradients) before "
                             "changing damp")
        if state.fisher.kind is FisherKind.INVERSE:
            raise ValueError("the Woodbury build fixed λ at its first chunk of gradients: call reset() (dropping "
                             "them) before changing damp")
        if fits_on_heldout(damping) and state.grads.buffer is None:
            raise ValueError(f"damp={damp!r} chooses λ on the held-out last chunk, which the failed prune() freed: "
                             "call reset() and collect the gradients again")
        state.fisher.inversion = None  # fitted for the old damp; no block was inverted with it
    new = dataclasses.replace(config, damping=damping, chunk_size=chunk_size).resolved_for(device)
    if state is not None:
        state.config = new
    return new
