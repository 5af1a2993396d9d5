"""FisherPruner: the Optimal BERT Surgeon around the kernels of ``obert_kernels.ops``.

Life of a prune step: ``add_grads`` m times (each gradient masked, buffered, and applied
to the Fisher state k at a time), then ``prune(s)``: scores, selection, weight update,
masks; the Fisher state is freed and the next step starts from fresh gradients.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import ops, selection, sequential_select
from .damping import AbsoluteDamp, BlockLayout, block_layout, parse_damp
from .distributed import Shard, agree, all_gather_flat, all_reduce_sum, resolve_group, split_blocks
from .memory import FisherMemoryError, MemoryEstimate, estimate_memory
from .patterns import parse_pattern
from .report import PruneReport, TensorReport

__all__ = ["FisherPruner", "prunable_weights", "auto_fisher_method", "PRUNABLE_MODULES", "FISHER_METHODS", "FISHER_STORAGES"]

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
FISHER_METHODS = ("auto", "direct", "woodbury")
FISHER_STORAGES = ("dense", "packed")
# "sequential" (SPEC §2d): greedy removal order per block, then the joint update of what it removed
UPDATES = ops.UPDATES + ("sequential",)


def auto_fisher_method(device: torch.device) -> str:
    """The Fisher build that "auto" picks on ``device``, and why.

    CPU -> "direct": on 2 cores, d = 10^6, B = 50, m = 1024 it built F⁻¹ 18x faster than
    the naive per-gradient update with 6x less error (bench/results/cpu-fisher-build-*.txt),
    while the Woodbury form stays memory-bound there. Its limit: C = Σ g gᵀ/m is stored in
    float32, so its error grows with cond(λI + C); measured (2026-11-21, B = 50, m = 256)
    on gradients whose spectrum decays 2x per direction, error/naive was 0.36 at λ = 1e-7,
    2.5 at 1e-8 and 28 at 1e-9 (relative errors 1.6e-7, 1e-6, 1e-5), while on full-rank
    spectra it stayed below naive's down to λ = 1e-9. Pass fisher_method="woodbury" when λ
    sits far below most of the gradient spectrum.
    Other devices -> "woodbury" until their backends' benchmarks decide.
    """
    return "direct" if torch.device(device).type == "cpu" else "woodbury"

def prunable_weights(module: nn.Module, types=PRUNABLE_MODULES) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every Linear/Conv module in ``module``, named as in named_parameters."""
    out = []
    for mod_name, mod in module.named_modules():
        if isinstance(mod, types) and isinstance(getattr(mod, "weight", None), torch.Tensor):
            out.append((f"{mod_name}.weight" if mod_name else "weight", mod.weight))
    return out


@dataclass
class _Slot:
    """One tracked tensor and where its blocks sit in the shared Fisher state."""

    name: str
    tensor: torch.Tensor
    block_start: int
    num_blocks: int

    @property
    def numel(self) -> int:
        return self.tensor.numel()


@dataclass
class _Piece:
    """The part of one tracked tensor whose blocks this rank owns (all of it on one process).

    Its blocks are [local_block, local_block + num_blocks) of this rank's Fisher state and
    its weights are [start, stop) of the flattened tensor; pieces start on block bounds.
    """

    slot: _Slot
    local_block: int
    num_blocks: int
    start: int
    stop: int

    @property
    def blocks(self) -> slice:
        return slice(self.local_block, self.local_block + self.num_blocks)

    @property
    def weights(self) -> slice:
        return slice(self.start, self.stop)


class _FisherState:
    """F⁻¹ (or, on the direct path, Σ g gᵀ / m until finalized) and the gradient buffer."""

    def __init__(self, num_blocks: int, block_size: int, chunk_size: int, method: str, device, storage: str = "dense"):
        # Woodbury: the damping policy sets F₀⁻¹ = diag(1/λ) at the first flush (a relative λ
        # needs that first chunk); direct: Σ g gᵀ / m starts at zero. Packed storage keeps
        # each block's upper triangle, (num_blocks, B(B+1)/2): ops/packed.py.
        if storage == "packed":
            self.blocks = torch.zeros(num_blocks, ops.packed.packed_size(block_size), device=device)
        else:
            self.blocks = torch.zeros(num_blocks, block_size, block_size, device=device)
        # block-major (num_blocks, k, B): each block's k gradient slices are contiguous, so the
        # batched products need no transpose. The zero padding of each tensor's last block is
        # written once here and never touched.
        self.buffer = torch.zeros(num_blocks, chunk_size, block_size, device=device)
        self.filled = 0
        self.collected = 0
        self.last_flushed = 0  # gradients in the last flushed chunk (still in the buffer): AutoDamp's held-out set
        self.started = False
        self.inverted = method == "woodbury"


class FisherPruner:
    """Second-order pruner with a block-diagonal inverse empirical Fisher (SPEC §1–3).

    params: an nn.Module (its Linear/Conv weights), a mapping name -> tensor, or an
        iterable of (name, tensor); floating point, all on one device.
    block_size: B, weights per Fisher block (blocks never straddle tensors).
    num_grads: m, gradients per Fisher estimate.
    damp: λ of F = λI + (1/m) Σ g gᵀ: a number > 0 (absolute), "rel:α[:block]" (α × the mean
        Fisher diagonal per tensor or block), "auto[:block]" (α chosen on held-out gradients;
        direct Fisher build only) or a ``damping.Damping``; see ``obert_kernels.damping``.
    pattern: "unstructured" | "block4" | "N:M" (e.g. "2:4").
    global_sparsity: one threshold over all tensors (True) or sparsity s per tensor.
    update: "obs" (summed single-weight/group OBS updates, the paper's) | "joint" | "none" |
        "sequential" (each block removes a prefix of its greedy order, ops.sequential_order; CAP).
    backend: "auto" | "torch" | "triton" | "cuda", passed to every op.
    chunk_size: k, gradients buffered per Fisher update (memory: k·d floats).
    fisher_method: "direct" (accumulate F, invert once) | "woodbury" (rank-k updates of F⁻¹) |
        "auto" (see ``auto_fisher_method``: direct on CPUs).
    fisher_storage: "dense" (num_blocks, B, B) | "packed": upper triangles (num_blocks, B(B+1)/2),
        (B+1)/(2B) of the memory (51% at B = 50). The CUDA kernels read it directly; the
        torch/Triton backends unpack it tile by tile (ops/packed.py), costing time, not memory.
    verbose: print the memory estimate (to stderr) before allocating.
    max_memory_fraction: refuse (FisherMemoryError) when the Fisher state needs more
        than this fraction of the device's free memory.
    process_group: a torch.distributed group over which to shard the Fisher blocks;
        None (default) uses the initialized default group if there is one, False never
        shards. Every rank must pass the same (all-reduced) gradients; prune() and, when
        sharded, fisher_inverse() are collective calls (see obert_kernels.distributed).

    The Fisher state is float32 whatever the weights' dtype; fp16/bf16 weights are
    updated in float32 and cast back.
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
        fisher_storage: str = "dense",
        verbose: bool = True,
        max_memory_fraction: float = 0.9,
        process_group=None,
    ):
        self.pattern = parse_pattern(pattern)
        _check_positive_int("block_size", block_size)
        _check_positive_int("num_grads", num_grads)
        _check_positive_int("chunk_size", chunk_size)
        self.damping = parse_damp(damp)
        self.pattern.check_block_size(block_size)
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if fisher_method not in FISHER_METHODS:
            raise ValueError(f"fisher_method must be one of {FISHER_METHODS}, got {fisher_method!r}")
        if fisher_storage not in FISHER_STORAGES:
            raise ValueError(f"fisher_storage must be one of {FISHER_STORAGES}, got {fisher_storage!r}")
        self.fisher_storage = fisher_storage
        if backend != "auto" and backend not in ops.BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {ops.BACKENDS}, got {backend!r}")
        self.block_size, self.num_grads, self.damp = block_size, num_grads, self.damping.spec
        self.global_sparsity, self.update, self.backend = bool(global_sparsity), update, backend
        self.chunk_size = self.damping.chunk_size_for(num_grads, min(chunk_size, num_grads))
        self.verbose, self.max_memory_fraction = verbose, max_memory_fraction
        self._slots = self._make_slots(_named_tensors(params))
        self.device = self._slots[0].tensor.device
        self.fisher_method = auto_fisher_method(self.device) if fisher_method == "auto" else fisher_method
        if self.damping.needs_direct:
            if fisher_method == "woodbury":
                raise ValueError(f"damp={self.damp!r} needs the Fisher itself (fisher_method='direct'); on the Woodbury "
                                 "path F₀⁻¹ = I/λ fixes λ before the first gradient: pass a relative damp 'rel:α' instead")
            self.fisher_method = "direct"
        if fisher_storage == "packed" and not isinstance(self.damping, AbsoluteDamp):
            raise ValueError(f"damp={self.damp!r} is relative to the Fisher diagonal, which packed storage does not "
                             "keep per tensor here: pass an absolute damp (a number) with fisher_storage='packed'")
        self._shard: Shard = resolve_group(process_group)
        self._pieces = self._make_pieces()
        self._pruned = {s.name: torch.zeros(s.numel, dtype=torch.bool, device=self.device) for s in self._slots}
        self._state: _FisherState | None = None
        self.history: list[PruneReport] = []
        self._check_memory()

    # ---- set-up -------------------------------------------------------------------
    def _make_slots(self, named: list[tuple[str, torch.Tensor]]) -> list[_Slot]:
        if not named:
            raise ValueError("no tensors to prune: params has no Linear/Conv weights or is empty")
        slots, seen_names, seen_ids, start = [], set(), set(), 0
        device = named[0][1].device
        for name, t in named:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name!r} is not a tensor ({type(t).__name__})")
            if not t.is_floating_point():
                raise TypeError(f"{name!r} has dtype {t.dtype}; only floating-point tensors can be pruned")
            if t.numel() == 0:
                raise ValueError(f"{name!r} is empty")
            if t.device != device:
                raise ValueError(f"{name!r} is on {t.device} but {named[0][0]!r} is on {device}: put all tracked tensors on one device")
            if name in seen_names or id(t) in seen_ids:
                raise ValueError(f"{name!r} is listed twice (same name or same tensor)")
            self._check_row_fits_pattern(name, t)
            seen_names.add(name)
            seen_ids.add(id(t))
            nb = -(-t.numel() // self.block_size)
            slots.append(_Slot(name, t, start, nb))
            start += nb
        return slots

    def _check_row_fits_pattern(self, name: str, t: torch.Tensor) -> None:
        g = self.pattern.group_size
        row = t.numel() // t.shape[0] if t.dim() > 1 else t.numel()
        if g > 1 and row % g:
            raise ValueError(
                f"{name!r} has rows of {row} weights, not divisible by the group size {g} of pattern "
                f"{self.pattern.name!r}: groups would straddle rows"
            )

    def _make_pieces(self) -> list[_Piece]:
        lo, hi = split_blocks(self.num_blocks, self._shard.world)[self._shard.rank]
        pieces, B = [], self.block_size
        for slot in self._slots:
            first, last = max(slot.block_start, lo), min(slot.block_start + slot.num_blocks, hi)
            if first < last:
                start = (first - slot.block_start) * B
                stop = min((last - slot.block_start) * B, slot.numel)
                pieces.append(_Piece(slot, first - lo, last - first, start, stop))
        return pieces

    @property
    def local_num_blocks(self) -> int:
        """Fisher blocks this process holds (all of them unless sharded)."""
        return sum(p.num_blocks for p in self._pieces)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._slots]

    @property
    def num_blocks(self) -> int:
        return sum(s.num_blocks for s in self._slots)

    def memory_estimate(self) -> MemoryEstimate:
        """Bytes this process's Fisher state needs on its device (its share when sharded), and what is free there."""
        return estimate_memory([p.stop - p.start for p in self._pieces], self.block_size, self.chunk_size, self.device,
                               packed=self.fisher_storage == "packed")

    def _check_memory(self, announce: bool = True) -> MemoryEstimate:
        est = self.memory_estimate()
        if self.verbose and announce:
            where = f"rank {self._shard.rank} of {self._shard.world}: " if self._shard.distributed else ""
            print(f"obert_kernels: {where}{est}", file=sys.stderr)
        if not est.fits(self.max_memory_fraction):
            raise FisherMemoryError(
                f"{est}; that is more than {self.max_memory_fraction:.0%} of the free memory. "
                "Lower block_size or chunk_size, prune fewer tensors, or use a device with more memory."
            )
        return est

    # ---- gradients ----------------------------------------------------------------
    @property
    def num_collected(self) -> int:
        """Gradients collected toward the current Fisher estimate."""
        return 0 if self._state is None else self._state.collected

    def _gather(self, grads) -> list[torch.Tensor]:
        """Gradients in slot order, checked (shape, dtype, finiteness) before anything is written."""
        if grads is None:
            got = [s.tensor.grad for s in self._slots]
            missing = [s.name for s, g in zip(self._slots, got) if g is None]
            if missing:
                raise ValueError(f"no .grad on {missing[:3]}{'...' if len(missing) > 3 else ''}: run backward() first")
        elif isinstance(grads, Mapping):
            unknown = set(grads) - set(self.names)
            missing = [n for n in self.names if n not in grads]
            if unknown or missing:
                raise ValueError(f"grads must have exactly the tracked names; missing {missing[:3]}, unknown {sorted(unknown)[:3]}")
            got = [grads[n] for n in self.names]
        else:
            got = list(grads)
            if len(got) != len(self._slots):
                raise ValueError(f"got {len(got)} gradients for {len(self._slots)} tracked tensors")
        for slot, g in zip(self._slots, got):
            if not isinstance(g, torch.Tensor) or not g.is_floating_point():
                raise TypeError(f"gradient of {slot.name!r} must be a floating-point tensor")
            if g.shape != slot.tensor.shape:
                raise ValueError(f"gradient of {slot.name!r} has shape {tuple(g.shape)}, weight has {tuple(slot.tensor.shape)}")
            if not bool(torch.isfinite(g).all()):
                raise ValueError(f"gradient of {slot.name!r} has non-finite values; nothing was added")
        return got

    def add_grads(self, grads=None) -> int:
        """Add one gradient sample (``None`` reads each tracked tensor's ``.grad``).

        grads: None, a mapping name -> tensor, or a sequence in ``names`` order, each
        shaped like its weight. Gradients of pruned weights are zeroed. Returns how many
        gradients are collected toward the current estimate.
        """
        got = self._gather(grads)
        if self.num_collected >= self.num_grads:
            raise RuntimeError(f"already collected {self.num_grads} of {self.num_grads} gradients: call prune() first")
        state = self._state_or_new()
        by_name = dict(zip(self.names, got))
        for piece in self._pieces:
            name = piece.slot.name
            flat = by_name[name].detach().reshape(-1)[piece.weights].to(self.device, torch.float32)
            flat = flat.masked_fill(self._pruned[name][piece.weights], 0.0)
            self._write_row(state.buffer[piece.blocks, state.filled], flat)
        state.filled += 1
        state.collected += 1
        if state.filled == state.buffer.shape[1] or state.collected == self.num_grads:
            self._flush(state)
        return state.collected

    def _write_row(self, rows: torch.Tensor, flat: torch.Tensor) -> None:
        """Copy a flat (d,) gradient into a (num_blocks, B) strided view, the last block partly."""
        B = self.block_size
        full = flat.numel() // B
        rows[:full].copy_(flat[: full * B].view(full, B))
        if full < rows.shape[0]:
            rows[full, : flat.numel() - full * B].copy_(flat[full * B :])

    def _state_or_new(self) -> _FisherState:
        if self._state is None:
            self._check_memory(announce=False)  # free memory may have changed since __init__
            self._state = _FisherState(self.local_num_blocks, self.block_size, self.chunk_size, self.fisher_method,
                                       self.device, self.fisher_storage)
        return self._state

    def _flush(self, state: _FisherState) -> None:
        if state.filled == 0:
            return
        chunk = state.buffer[:, : state.filled]
        has_blocks = state.blocks.shape[0] > 0  # a rank may own none; it still joins the damping's collectives
        if self.fisher_method == "woodbury":
            if not state.started:
                self.damping.start_woodbury(state.blocks, chunk, self._layout())
            if has_blocks:
                ops.woodbury_update(state.blocks, chunk, self.num_grads, backend=self.backend)
        elif has_blocks:
            ops.fisher_accumulate(state.blocks, chunk, self.num_grads, backend=self.backend)
        state.started = True
        state.last_flushed, state.filled = state.filled, 0

    def _layout(self) -> BlockLayout:
        """Where this rank's blocks sit (tensor, live weights); sums per tensor over the ranks when sharded."""
        slot_index = {s.name: i for i, s in enumerate(self._slots)}
        reduce = (lambda t: all_reduce_sum(self._shard, t)) if self._shard.distributed else None
        return block_layout([p.num_blocks for p in self._pieces], [self._pruned[p.slot.name][p.weights] for p in self._pieces],
                            self.block_size, self.device, tensor_ids=[slot_index[p.slot.name] for p in self._pieces],
                            num_tensors=len(self._slots), reduce=reduce)

    def _slot(self, name: str) -> _Slot:
        for s in self._slots:
            if s.name == name:
                return s
        raise KeyError(f"{name!r} is not tracked; tracked: {self.names[:5]}{'...' if len(self.names) > 5 else ''}")

    def fisher_inverse(self, name: str) -> torch.Tensor:
        """A copy of the current F⁻¹ blocks of one tensor: (num_blocks, B, B) float32 (dense
        whatever ``fisher_storage`` is).

        Uses the gradients collected so far (still divided by m); with none, (1/λ)·I.
        When sharded this is a collective: every rank must call it, and each gets all blocks
        (with a per-tensor relative damp, λ then comes from this rank's share of the tensor).
        """
        slot = self._slot(name)
        if self._state is None:
            return self.damping.initial_finv(slot.num_blocks, self.block_size, self.device)
        self._flush(self._state)
        layout = self._layout()
        own = torch.zeros(slot.num_blocks, self.block_size, self.block_size, device=self.device)
        for piece in self._pieces:
            if piece.slot is slot:
                blocks = self._state.blocks[piece.blocks].clone()
                if blocks.dim() == 2:  # packed storage: hand out dense blocks
                    blocks = ops.unpack_upper(blocks, self.block_size)
                if not self._state.inverted:
                    self.damping.invert(blocks, layout[piece.blocks], backend=self.backend)
                first = piece.start // self.block_size
                own[first : first + piece.num_blocks] = blocks
        if not self._shard.distributed:
            return own
        return all_reduce_sum(self._shard, own)

    # ---- pruning ------------------------------------------------------------------
    def _check_sparsity(self, sparsity):
        if self.pattern.is_nm:
            return self.pattern.n_prune / self.pattern.group_size
        if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        return float(sparsity)

    def prune(self, sparsity: float | None = None) -> PruneReport:
        """Prune to ``sparsity`` (ignored for N:M) with the collected gradients; see the class doc.

        Already-pruned weights stay pruned (if they exceed the target, nothing new is
        pruned). Frees the Fisher state. Returns a PruneReport (also kept in ``history``).
        When sharded, a collective: if any rank fails, every rank raises.
        """
        target = self._check_sparsity(sparsity)
        if self.num_collected < self.num_grads:
            raise RuntimeError(f"prune() needs {self.num_grads} gradients, {self.num_collected} collected: call add_grads() more")
        start = time.perf_counter()
        # two agreements: a rank that fails applying its last chunk is known before the
        # damping's own per-tensor collectives (relative/auto damp) start
        agree(self._shard, "applying gradients", lambda: self._flush(self._state))
        finv = agree(self._shard, "building F⁻¹", self._finalize)
        weights = {s.name: s.tensor.detach().reshape(-1).to(self.device, torch.float32, copy=True) for s in self._slots}
        new, factors = self._select(target, weights, finv)
        updated = self._updated_weights(weights, finv, new, factors)
        report = PruneReport(target, self.pattern.name, self.update, self.global_sparsity, self.backend, 0.0,
                             damping=self.damping.describe())
        for slot in self._slots:
            pruned = self._pruned[slot.name] | new[slot.name]
            self._pruned[slot.name] = pruned
            with torch.no_grad():
                slot.tensor.copy_(updated[slot.name].masked_fill(pruned, 0.0).reshape(slot.tensor.shape))
            report.tensors[slot.name] = TensorReport(slot.numel, int(pruned.sum()), int(new[slot.name].sum()))
        self._state = None
        report.seconds = time.perf_counter() - start
        self.history.append(report)
        return report

    def _finalize(self) -> torch.Tensor:
        state = self._state
        self._flush(state)
        if not state.inverted:
            layout = self._layout()  # every rank reaches this: the damping may sum per-tensor statistics over ranks
            self.damping.fit(state.blocks, state.buffer[:, : state.last_flushed], self.num_grads, layout)
            state.buffer = None  # not needed past here: give its memory back before inverting
            self.damping.invert(state.blocks, layout, backend=self.backend)
            state.inverted = True
        state.buffer = None  # the buffer is not needed for scoring; give its memory back now
        return state.blocks

    def _local_scores(self, weights: dict, finv: torch.Tensor) -> tuple[torch.Tensor, list]:
        """This rank's scores, each piece flattened, in global block order; and each piece's
        factors for the "obs" update (ops.obs_scores(return_factors=True); None for other updates),
        so the update applies the solves scoring made instead of repeating them."""
        want = bool(self._pieces) and self._wants_factors(weights[self._pieces[0].slot.name], finv)
        scores, factors = [], []
        for p in self._pieces:
            out = ops.obs_scores(weights[p.slot.name][p.weights], finv[p.blocks], self.pattern,
                                 self._pruned[p.slot.name][p.weights], return_factors=want, backend=self.backend)
            scores.append((out[0] if want else out).reshape(-1))
            factors.append(out[1] if want else None)
        return (torch.cat(scores) if scores else torch.zeros(0, device=self.device)), factors

    def _wants_factors(self, weight: torch.Tensor, finv: torch.Tensor) -> bool:
        """Whether scoring hands the update its solves: for update="obs", on a backend whose
        scoring writes them (auto always finds one; CUDA's kernels solve in the update instead)."""
        if self.update != "obs":
            return False
        if self.backend == "auto":
            return True
        B = self.block_size
        dense = ops.unpack_upper(finv[:1], B) if finv.dim() == 2 else finv[:1]  # the reasons look at a dense block
        return not ops.not_supported_reasons("obs_scores", self.backend, weight=weight[:B], finv=dense,
                                             pattern=self.pattern, return_factors=True)

    def _score_units(self, slot: _Slot) -> tuple[int, ...]:
        """Shape of one tensor's scores: (d,), (d/g,) or (d/M, C(M, N))."""
        g = self.pattern.group_size
        if self.pattern.is_nm:
            return (slot.numel // g, len(self.pattern.subsets))
        return (slot.numel // g,)

    def _select(self, target: float, weights: dict, finv: torch.Tensor) -> tuple[dict[str, torch.Tensor], list]:
        """name -> bool (d,) mask of the weights newly pruned in this step (the same on every
        rank), and this rank's per-piece factors (see _local_scores)."""
        if self.update == "sequential":
            return self._select_sequential(target, weights, finv), [None] * len(self._pieces)
        local, factors = agree(self._shard, "scoring", lambda: self._local_scores(weights, finv))
        flat = all_gather_flat(self._shard, local)
        scores, offset = {}, 0
        for slot in self._slots:
            shape = self._score_units(slot)
            size = math.prod(shape)
            scores[slot.name] = flat[offset : offset + size].reshape(shape)
            offset += size
        if self.pattern.is_nm:
            chosen = {n: selection.select_nm(s, self.pattern) for n, s in scores.items()}
        else:
            pick = selection.select_global if self.global_sparsity else selection.select_per_tensor
            units = pick(scores, target)
            chosen = {n: selection.expand_groups(u, self.pattern.group_size) for n, u in units.items()}
        return {n: chosen[n] & ~self._pruned[n] for n in chosen}, factors

    def _updated_weights(self, weights: dict, finv: torch.Tensor, new: dict, factors: list) -> dict[str, torch.Tensor]:
        """name -> flat float32 weights after the OBS update; when sharded, each rank updates
        its pieces and one all-reduce (one non-zero term per weight) gives everyone all of them."""

        def local_update() -> torch.Tensor:
            contrib = torch.zeros(sum(s.numel for s in self._slots), device=self.device)
            offsets = dict(zip(self.names, itertools.accumulate((s.numel for s in self._slots), initial=0)))
            for p, piece_factors in zip(self._pieces, factors):
                w = weights[p.slot.name][p.weights].clone()
                mask, update = new[p.slot.name][p.weights], self.update
                if update == "sequential":  # a block after its greedy prefix = the joint update of all it lost
                    mask, update = mask | self._pruned[p.slot.name][p.weights], "joint"
                ops.obs_update(w, finv[p.blocks], mask, self.pattern, update,
                               factors=piece_factors, backend=self.backend)
                base = offsets[p.slot.name]
                contrib[base + p.start : base + p.stop] = w
            return contrib

        contrib = agree(self._shard, "weight update", local_update)
        all_reduce_sum(self._shard, contrib)
        out, offset = {}, 0
        for slot in self._slots:
            out[slot.name] = contrib[offset : offset + slot.numel]
            offset += slot.numel
        return out

    def _select_sequential(self, target: float, weights: dict, finv: torch.Tensor) -> dict[str, torch.Tensor]:
        """update="sequential": name -> bool (d,) newly pruned, the same on every rank. Each rank
        orders its own blocks; only the (blocks, U) cumulative losses are gathered for the threshold,
        and each rank's prefixes are summed into the full masks (one non-zero term per weight)."""
        for name, w in weights.items():  # pruned weights are zero: the order and the joint update assume it
            w.masked_fill_(self._pruned[name], 0.0)

        def local_orders():
            out = [ops.sequential_order(weights[p.slot.name][p.weights], finv[p.blocks], self.pattern,
                                        self._pruned[p.slot.name][p.weights], backend=self.backend) for p in self._pieces]
            U = ops.sequential.units_per_block(self.pattern, self.block_size)
            cum = torch.cat([c.float() for _, c in out]) if out else torch.zeros(0, U, device=self.device)
            return [o for o, _ in out], cum, U

        orders, cum, U = agree(self._shard, "sequential order", local_orders)
        flat = all_gather_flat(self._shard, cum.reshape(-1)).reshape(-1, U)
        cums = {s.name: flat[s.block_start : s.block_start + s.num_blocks] for s in self._slots}
        g = ops.sequential.unit_size(self.pattern)
        counts = sequential_select.block_counts(
            cums, {s.name: s.numel // g for s in self._slots},
            {n: sequential_select.pruned_units(m, self.pattern) for n, m in self._pruned.items()},
            target, self.pattern, self.global_sparsity)
        offsets = dict(zip(self.names, itertools.accumulate((s.numel for s in self._slots), initial=0)))
        contrib = torch.zeros(sum(s.numel for s in self._slots), device=self.device)
        for p, order in zip(self._pieces, orders):
            first = p.start // self.block_size
            mask = sequential_select.prefix_mask(order, counts[p.slot.name][first : first + p.num_blocks],
                                                 self.pattern, p.stop - p.start)
            contrib[offsets[p.slot.name] + p.start : offsets[p.slot.name] + p.stop] = mask.float()
        all_reduce_sum(self._shard, contrib)
        # a block4 unit may hold weights pruned before: they are not new
        return {s.name: (contrib[offsets[s.name] : offsets[s.name] + s.numel] > 0.5) & ~self._pruned[s.name]
                for s in self._slots}

    # ---- masks --------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """name -> bool tensor shaped like the weight, True where the weight is kept."""
        return {s.name: ~self._pruned[s.name].reshape(s.tensor.shape) for s in self._slots}

    @property
    def sparsity(self) -> float:
        """Fraction of tracked weights pruned so far."""
        return sum(int(p.sum()) for p in self._pruned.values()) / sum(s.numel for s in self._slots)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every pruned weight (call after an optimizer step to keep them pruned)."""
        for slot in self._slots:
            slot.tensor.masked_fill_(self._pruned[slot.name].reshape(slot.tensor.shape), 0.0)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the ``.grad`` of pruned weights, so optimizers do not move them."""
        for slot in self._slots:
            if slot.tensor.grad is not None:
                slot.tensor.grad.masked_fill_(self._pruned[slot.name].reshape(slot.tensor.shape), 0.0)

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
        """Restore masks (and zero the masked weights); names and shapes must match."""
        masks = state.get("masks") if isinstance(state, dict) else None
        if masks is None:
            raise ValueError("not a FisherPruner state_dict: no 'masks'")
        if set(masks) != set(self.names):
            raise ValueError(f"state_dict masks are for {sorted(masks)[:3]}..., this pruner tracks {self.names[:3]}...")
        for slot in self._slots:
            m = masks[slot.name]
            if tuple(m.shape) != tuple(slot.tensor.shape) or m.dtype != torch.bool:
                raise ValueError(f"mask of {slot.name!r} must be bool of shape {tuple(slot.tensor.shape)}")
        self._pruned = {s.name: ~masks[s.name].reshape(-1).to(self.device) for s in self._slots}
        self._state = None
        self.apply_masks()

    def __repr__(self) -> str:
        return (f"FisherPruner({len(self._slots)} tensors, {sum(s.numel for s in self._slots):,} weights, "
                f"B={self.block_size}, m={self.num_grads}, pattern={self.pattern.name}, update={self.update}, "
                f"sparsity={self.sparsity:.2%})")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _named_tensors(params) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, nn.Module):
        return prunable_weights(params)
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an nn.Module, a mapping name -> tensor, or (name, tensor) pairs, not one tensor")
    if isinstance(params, Mapping):
        return list(params.items())
    if isinstance(params, Iterable):
        items = list(params)
        if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in items):
            raise TypeError("an iterable params must hold (name, tensor) pairs")
        return items
    raise TypeError(f"params must be an nn.Module, a mapping or (name, tensor) pairs, got {type(params).__name__}")
