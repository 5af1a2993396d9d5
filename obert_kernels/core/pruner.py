"""FisherPruner: the Optimal BERT Surgeon around the kernels of ``obert_kernels.ops``.

Life of a prune step: ``add_grads`` m times (each gradient masked, buffered, and applied
to the Fisher state k at a time), then ``prune(s)``: scores, selection, weight update,
masks; the Fisher state is freed and the next step starts from fresh gradients.

This module sequences the parts in this package, each with one job: ``config``
(arguments), ``tracked`` (tensors, pieces, gradients), ``masks``, ``grad_buffer`` and
``fisher_state`` (the step's Fisher build), ``scoring`` (scores and selection),
``weight_update`` (the update and the write-back), ``sharding`` (ranks).
"""
from __future__ import annotations

import contextlib
import sys
import time

import torch

from .config import FISHER_METHODS, FISHER_STORAGES, PrunerConfig, auto_fisher_method, auto_fisher_storage
from .damping import BlockLayout, invert_blocks
from .damping_cv import prune_step
from .fisher_state import FisherBuild, FisherKind, config_with_damp
from .grad_buffer import GradBuffer, check_all_finite
from .masks import PrunedMasks
from .memory import MemoryEstimate, estimate_memory, refuse_if_too_big
from .report import PruneReport, reports_from_dicts, warn_collapsed
from .scoring import select_new
from .sharding import Shard, agree, all_reduce_sum, resolve_group
from .tracked import PRUNABLE_MODULES, TrackedTensors, make_slots, named_tensors, prunable_weights
from .transaction import Checkpoint
from .weight_update import updated_weights, write_back

__all__ = ["FisherPruner", "prunable_weights", "auto_fisher_method", "auto_fisher_storage", "named_tensors",
           "PRUNABLE_MODULES", "FISHER_METHODS", "FISHER_STORAGES"]


def _setting(name: str, doc: str | None = None) -> property:
    """A read-only attribute of FisherPruner that reads ``config.<name>``."""
    return property(lambda self: getattr(self.config, name), doc=doc or f"``config.{name}``")


class FisherPruner:
    """Second-order pruner with a block-diagonal inverse empirical Fisher (SPEC §1–3).

    params: an nn.Module (its Linear/Conv weights), a mapping name -> tensor, or an
        iterable of (name, tensor); floating point, all on one device.
    block_size: B, weights per Fisher block (blocks never straddle tensors).
    num_grads: m, gradients per Fisher estimate.
    damp: λ of F = λI + (1/m) Σ g gᵀ: a number > 0 (absolute), "rel:α[:block]" (α × the mean
        Fisher diagonal per tensor or block), "auto[:block]" (α chosen on held-out gradients;
        direct Fisher build only) or a ``damping.Damping``; see ``obert_kernels.core.damping``.
    pattern: "unstructured" | "block4" | "N:M" (e.g. "2:4").
    global_sparsity: one threshold over all tensors (True) or sparsity s per tensor.
    update: "obs" (summed single-weight/group OBS updates, the paper's) | "joint" | "none" |
        "sequential" (each block removes a prefix of its greedy removal order, ops.sequential_order;
        CAP) — the keys of ``weight_update.UPDATE_STRATEGIES``.
    backend: "auto" | "torch" | "triton" | "cuda", passed to every op.
    chunk_size: k, gradients buffered per Fisher update (memory: k·d floats).
    fisher_method: "direct" (accumulate F, invert once) | "woodbury" (rank-k updates of F⁻¹) |
        "auto" (see ``auto_fisher_method``: direct on CPUs).
    fisher_storage: "dense" (num_blocks, B, B) | "packed": upper triangles (num_blocks, B(B+1)/2),
        (B+1)/(2B) of the memory (51% at B = 50) | "auto" (see ``auto_fisher_storage``: packed
        where the direct build's accumulation and inversion read it natively, the cpp backend
        on a CPU; dense elsewhere). The CUDA kernels and the CPU's accumulation and inversion
        (cpp) read it directly; the torch/Triton backends unpack it tile by tile (ops/packed.py;
        cache-sized tiles on a CPU). The same pruned weights either way; any damp.
    verbose: print the memory estimate (to stderr) before allocating.
    max_memory_fraction: refuse (FisherMemoryError) when the Fisher state needs more
        than this fraction of the device's free memory.
    process_group: a torch.distributed group over which to shard the Fisher blocks;
        None (default) uses the initialized default group if there is one, False never
        shards. Every rank must pass the same (all-reduced) gradients; prune() and, when
        sharded, fisher_inverse() are collective calls (see obert_kernels.core.sharding).
    max_tensor_sparsity: None, or (global selection) no tensor is pruned above this fraction;
        the slots a capped tensor cannot take go to the next-best weights of the others.
        Without a cap, a tensor taken above 99% is warned about (``report.warn_collapsed``).

    The Fisher state is float32 whatever the weights' dtype; fp16/bf16 weights are
    updated in float32 and cast back.

    The parts, one job each: ``config`` (checked arguments), ``TrackedTensors`` (the
    tensors and this rank's pieces), ``PrunedMasks``, ``FisherBuild`` (gradient buffer and
    Fisher state of the current step), ``scoring`` and ``weight_update``; this class only
    sequences them. State that changes: ``_state`` (the step's FisherBuild, None between
    steps), ``_masks``, ``history`` and the damping policy's choice (AutoDamp).

    Every call that changes state completes or raises with nothing changed, interrupts
    included (``transaction()``, core/transaction.py), and can be retried.
    """

    def __init__(
        self,
        params,
        *,
        block_size: int = 50,
        num_grads: int = 1024,
        damp: float = 1e-7,
        pattern: str = "unstructured",
        global_sparsity: bool = True,
        update: str = "obs",
        backend: str = "auto",
        chunk_size: int = 32,
        fisher_method: str = "auto",
        fisher_storage: str = "auto",
        verbose: bool = True,
        max_memory_fraction: float = 0.9,
        process_group=None,
        max_tensor_sparsity: float | None = None,
    ):
        config = PrunerConfig.from_args(
            block_size=block_size, num_grads=num_grads, damp=damp, pattern=pattern, global_sparsity=global_sparsity,
            update=update, backend=backend, chunk_size=chunk_size, fisher_method=fisher_method,
            fisher_storage=fisher_storage, verbose=verbose, max_memory_fraction=max_memory_fraction,
            max_tensor_sparsity=max_tensor_sparsity)
        slots = make_slots(params, block_size, config.pattern)
        self.config = config.resolved_for(slots[0].tensor.device)
        self._shard: Shard = resolve_group(process_group)
        self._tracked = TrackedTensors(slots, block_size, self._shard)
        self._check_memory()  # before the masks: nothing proportional to d is allocated before a refusal
        self._masks = PrunedMasks(self._tracked.slots, self.device)
        self._state: FisherBuild | None = None
        self.history: list[PruneReport] = []

    # ---- settings (read-only views of ``config``) --------------------------------------
    pattern = _setting("pattern")
    damping = _setting("damping")
    block_size = _setting("block_size")
    num_grads = _setting("num_grads")
    chunk_size = _setting("chunk_size", "k, the gradients buffered per Fisher update (as the damping policy wants it).")
    update = _setting("update")
    backend = _setting("backend")
    global_sparsity = _setting("global_sparsity")
    fisher_method = _setting("fisher_method", '"direct" or "woodbury" ("auto" resolved for the device).')
    fisher_storage = _setting("fisher_storage")
    verbose = _setting("verbose")
    max_memory_fraction = _setting("max_memory_fraction")
    max_tensor_sparsity = _setting("max_tensor_sparsity")

    @property
    def damp(self):
        """The damp as given: a number, 'rel:α[:block]', 'auto[:block]' or a Damping's spec. Settable
        for the next inversion (e.g. after a failed prune()); ``fisher_state.config_with_damp`` says when."""
        return self.config.damp

    @damp.setter
    def damp(self, value) -> None:
        self.config = config_with_damp(self.config, value, self._state, self.device)

    @property
    def device(self) -> torch.device:
        return self._tracked.device

    @property
    def names(self) -> list[str]:
        return self._tracked.names

    @property
    def num_blocks(self) -> int:
        return self._tracked.num_blocks

    @property
    def local_num_blocks(self) -> int:
        """Fisher blocks this process holds (all of them unless sharded)."""
        return self._tracked.local_num_blocks

    def _slot(self, name: str):
        """The tracked tensor ``name`` (a ``tracked.Slot``); KeyError naming the tracked ones if absent."""
        return self._tracked.slot(name)

    # ---- memory -------------------------------------------------------------------------
    def memory_estimate(self) -> MemoryEstimate:
        """Peak bytes a prune step allocates on this process's device (its share of F⁻¹ when sharded;
        masks, damping, scoring and update temporaries included: core/memory.py), and what is free there."""
        itemsizes = {s.tensor.element_size() for s in self._tracked.slots}  # .grad has its weight's dtype
        grad_itemsize = 4 if itemsizes == {4} else min(itemsizes - {4})
        return estimate_memory([p.stop - p.start for p in self._tracked.pieces], self.block_size, self.chunk_size,
                               self.device, packed=self.config.packed, total_weights=self._tracked.num_weights,
                               damping=self.damping, fisher_method=self.fisher_method, update=self.update,
                               pattern=self.pattern, grad_itemsize=grad_itemsize, backend=self.backend)

    def _check_memory(self, announce: bool = True) -> MemoryEstimate:
        est = self.memory_estimate()
        if self.verbose and announce:
            where = f"rank {self._shard.rank} of {self._shard.world}: " if self._shard.distributed else ""
            print(f"obert_kernels: {where}{est}", file=sys.stderr)
        refuse_if_too_big(est, self.max_memory_fraction)
        return est

    # ---- gradients ----------------------------------------------------------------------
    @property
    def num_collected(self) -> int:
        """Gradients collected toward the current Fisher estimate."""
        return 0 if self._state is None else self._state.collected

    def add_grads(self, grads=None) -> int:
        """Add one gradient sample (``None`` reads each tracked tensor's ``.grad``).

        grads: None, a mapping name -> tensor, or a sequence in ``names`` order, each
        shaped like its weight. Gradients of pruned weights are zeroed. Returns how many
        gradients are collected toward the current estimate.

        All or nothing: a call that raises (a NaN or ±inf gradient: ValueError; an interrupt)
        added nothing. A full chunk is applied by the next call (or prune()), before its own.
        """
        got = dict(zip(self.names, self._tracked.gradients(grads)))
        pieces, keep = self._tracked.pieces, self._masks.keep_or_none
        one_pass = GradBuffer.checks_while_copying(self.device, pieces, got, keep, self.config.backend)
        if not one_pass:
            check_all_finite(self.names, list(got.values()))  # else checked in the copy's one pass
        if self.num_collected >= self.num_grads:
            raise RuntimeError(f"already collected {self.num_grads} of {self.num_grads} gradients: call prune() "
                               "first (or reset() to discard them)")
        with self.transaction(weights=False):
            state = self._state_or_new()
            if state.grads.full:
                state.flush(self._layout)
            state.grads.add(pieces, got, keep, one_pass)
        return state.collected

    def reset(self) -> None:
        """Discard the gradients collected toward the current step (and their Fisher state)."""
        self._state = None

    @contextlib.contextmanager
    def transaction(self, *, weights: bool = True):
        """Any exception (interrupts too) inside puts masks, history, damping, the collected gradients
        and (``weights``: from a copy) the tracked weights back as on entry; see core/transaction.py."""
        checkpoint = Checkpoint.take(self.damping, self._masks, self.history, self._state,
                                     self._tracked.slots if weights else ())
        try:
            yield
        except BaseException as exc:
            self._state = checkpoint.restore(self._masks, self.history)
            checkpoint.note(exc)
            raise

    def _state_or_new(self) -> FisherBuild:
        if self._state is None:
            self._check_memory(announce=False)  # free memory may have changed since __init__
            self._state = FisherBuild(self.local_num_blocks, self.config, self.device)
        return self._state

    def _layout(self) -> BlockLayout:
        """Where this rank's blocks sit (tensor, live weights); sums per tensor over the ranks when sharded."""
        return self._tracked.layout(self._masks.pruned, self._shard)

    def fisher_inverse(self, name: str) -> torch.Tensor:
        """A copy of the current F⁻¹ blocks of one tensor: (num_blocks, B, B) float32 (dense
        whatever ``fisher_storage`` is).

        Uses the gradients collected so far (still divided by m); with none, (1/λ)·I.
        When sharded this is a collective: every rank must call it, and each gets all blocks
        (a relative λ from the statistics of every rank's blocks, as in ``prune``).
        """
        slot = self._slot(name)
        if self._state is None:
            return self.damping.initial_finv(slot.num_blocks, self.block_size, self.device)
        if self._state.fisher.inversion_started and self._state.fisher.kind is not FisherKind.INVERSE:
            raise RuntimeError("a failed prune() left the Fisher blocks partly inverted: call prune() again (it "
                               "resumes) or reset()")
        self._state.flush(self._layout)
        layout = self._layout()
        fisher = self._state.fisher
        if fisher.kind is not FisherKind.INVERSE:
            fisher.symmetrize()  # whole blocks are read below
        # a relative λ is relative to statistics of all blocks (one tensor's, or all tensors')
        scale = self.damping.block_scale(fisher.blocks, layout) if fisher.kind is not FisherKind.INVERSE else None
        pieces = [piece for piece in self._tracked.pieces if piece.slot is slot]
        # one piece of all the tensor's blocks on one rank: its inverted copy is the answer (a zeroed
        # tensor filled from it cost 0.04 s more at d = 10⁶, B = 50, 2026-12-01)
        own = None if len(pieces) == 1 and pieces[0].num_blocks == slot.num_blocks and not self._shard.distributed \
            else torch.zeros(slot.num_blocks, self.block_size, self.block_size, device=self.device)
        for piece in pieces:
            blocks = fisher.dense_copy(piece.blocks, self.block_size)
            if fisher.kind is not FisherKind.INVERSE:  # invert the copy (here, so a warning names the caller)
                # F itself (dense) is the copy a failed slice starts over from: none made per slice
                invert_blocks(self.damping, blocks, layout[piece.blocks], backend=self.backend,
                              scale=None if scale is None else scale[piece.blocks],
                              original=fisher.blocks[piece.blocks] if fisher.blocks.dim() == 3 else None)
            if own is None:
                return blocks
            first = piece.start // self.block_size
            own[first : first + piece.num_blocks] = blocks
        if not self._shard.distributed:
            return own
        return all_reduce_sum(self._shard, own)

    # ---- pruning ------------------------------------------------------------------------
    def check_sparsity(self, sparsity):
        """The target sparsity as a float in [0, 1) (N:M: the pattern's N/M, whatever is passed)."""
        return self.config.check_sparsity(sparsity)

    def prune(self, sparsity: float | None = None) -> PruneReport:
        """Prune to ``sparsity`` (ignored for N:M) with the collected gradients; see the class doc.

        Already-pruned weights stay pruned (if they exceed the target, nothing new is
        pruned). Frees the Fisher state. Returns a PruneReport (also kept in ``history``).
        When sharded, a collective: if any rank fails, every rank raises. If it raises, nothing
        changed and the collected Fisher is kept: retry (after setting ``damp``) or ``reset()``.
        Costs: a copy of the weights while it runs (README, "When something fails").
        """
        target = self.check_sparsity(sparsity)
        if self.num_collected < self.num_grads:
            raise RuntimeError(f"prune() needs {self.num_grads} gradients, {self.num_collected} collected: call add_grads() more")
        with self.transaction():
            try:
                return self._prune_step(target)
            except FloatingPointError as exc:
                exc.add_note("obert_kernels: the collected gradients are kept: set damp and call prune() again, "
                             "or reset() to discard them")
                raise

    def _prune_step(self, target: float) -> PruneReport:
        start = time.perf_counter()
        state, tracked = self._state, self._tracked
        # two agreements: a rank that fails applying its last chunk is known before the
        # damping's own per-tensor collectives (relative/auto damp) start
        agree(self._shard, "applying gradients", lambda: state.flush(self._layout))
        step = lambda: prune_step(tracked.pieces, tracked.float32_weights(), target, self.config,  # noqa: E731
                                  self.local_num_blocks, self.device, self._shard)  # damp="auto" scores the step
        finv = agree(self._shard, "building F⁻¹", lambda: state.finalize(self._layout, step))
        weights = tracked.float32_weights()
        new, factors = select_new(target, weights, finv, tracked, self._masks.pruned, self.config, self._shard)
        updated = updated_weights(tracked.pieces, tracked.slots, weights, finv, new, self._masks.pruned, factors,
                                  self.config, self._shard)
        report = PruneReport(target, self.pattern.name, self.update, self.global_sparsity, self.backend, 0.0,
                             damping=self.damping.describe(), fisher_method=self.fisher_method,
                             fisher_storage=self.fisher_storage)
        write_back(tracked.slots, self._masks, new, updated, report)
        report.seconds = time.perf_counter() - start
        self._state = None
        self.history.append(report)
        warn_collapsed(report)  # after the commit: a warning turned into an error leaves the step done
        return report

    # ---- masks --------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """name -> bool tensor shaped like the weight, True where the weight is kept."""
        return self._masks.keep_masks

    @property
    def sparsity(self) -> float:
        """Fraction of tracked weights pruned so far."""
        return self._masks.sparsity

    def apply_masks(self) -> None:
        """Zero every pruned weight (call after an optimizer step to keep them pruned)."""
        self._masks.zero_pruned_weights()

    def mask_grads(self) -> None:
        """Zero the ``.grad`` of pruned weights, so optimizers do not move them."""
        self._masks.zero_pruned_grads()

    def state_dict(self) -> dict:
        """Config, masks (CPU bool tensors) and prune history; the in-progress Fisher state is not saved."""
        return {
            "version": 1,
            "config": {"block_size": self.block_size, "num_grads": self.num_grads, "damp": self.damp,
                       "pattern": self.pattern.name, "global_sparsity": self.global_sparsity, "update": self.update},
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "history": [r.to_dict() for r in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore masks and history (and zero the masked weights); names and shapes must match.
        Checked first (ValueError); refused (RuntimeError) while gradients are collected, which it would drop."""
        masks = state.get("masks") if isinstance(state, dict) else None
        if masks is None:
            raise ValueError("not a FisherPruner state_dict: no 'masks'")
        if self.num_collected:
            raise RuntimeError(f"load_state_dict() would drop the {self.num_collected} gradients collected toward the "
                               "current step: call prune() or reset() first")
        pruned = self._masks.pruned_from_keep_masks(masks)
        history = reports_from_dicts(state.get("history", []))
        with self.transaction():
            self._masks.replace(pruned)
            self.history[:] = history
            self._state = None
            self.apply_masks()

    def __repr__(self) -> str:
        return (f"FisherPruner({len(self.names)} tensors, {self._tracked.num_weights:,} weights, "
                f"B={self.block_size}, m={self.num_grads}, pattern={self.pattern.name}, update={self.update}, "
                f"sparsity={self.sparsity:.2%})")
