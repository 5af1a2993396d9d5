"""Memory of a prune step (SPEC §3): estimate it, say it, refuse what will not fit.

The estimate is the peak of the bytes a prune step allocates on the tracked device, phase
by phase (``MemoryEstimate.phases``), taking the largest:

- ``collect``: the keep-masks, F (or F⁻¹ with the Woodbury build), the k-gradient buffer,
  a float32 copy of one gradient piece when the gradients are not float32, and the torch
  Woodbury update's temporaries (a sub-chunk of 8 gradients in float32 and float64);
- ``invert``: F, the buffer (``auto`` still holds it while it scores its candidates), the
  block layout, the damping's temporaries (float64 diagonals of relative/auto damping,
  auto's float64 scoring of a ``FIT_SLICE`` of blocks, the inversion slices of
  ``INVERT_SLICE`` blocks: the backup, the inverses and a retry's copies);
- ``score``: F⁻¹, a float32 copy of the weights, the scores and factors, the per-piece
  temporaries of ``obs_scores`` and the selection (the concatenated scores, a stable sort
  and its int64 indices);
- ``update``: F⁻¹, the weights, factors, new masks and the summed update, and one piece's
  update: ``obs`` copies the F⁻¹ blocks it touches (``finv[active]``: all of them once most
  blocks lose a weight), ``joint``/``sequential`` about four such copies (the masked
  blocks, the identity-padded copy, the Cholesky factor and LAPACK's working copy).

What was missing before (issue 14), measured by ``python_tests/test_memory.py`` (peak RSS
over the RSS before the pruner was built, 3·10⁵ weights in one tensor, B = 50, m = k = 12,
CPU, 2026-11-30): the former estimate, F⁻¹ + buffer = 71 MiB, was exceeded by the inversion
at damp 1e-7 (240 MiB: the absolute damp's backup of a 4096-block slice, the inverses, and
the retries' copies), by the update (125 MiB: obs copies the touched F⁻¹ blocks; joint 310
MiB), by damp="auto" (164 MiB over 61: its float64 scoring of 1024 blocks) and by the torch
Woodbury build while collecting (142 MiB).

The per-weight counts below follow the code they name; they model the torch kernels (what a
CPU runs, and the fallback everywhere). The Triton and CUDA kernels write only their outputs,
so on a GPU with backend="auto"/"triton"/"cuda" the F⁻¹-sized temporaries of the torch
kernels are left out (``fused=True``); that model has not been measured on a GPU.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ..ops.blocks import factor_shape, score_shape
from ..ops.packed import UNPACK_TILE_BYTES
from ..ops.patterns import Pattern, parse_pattern
from .damping import FIT_SLICE, INVERT_SLICE, AbsoluteDamp, AutoDamp, Damping, RelativeDamp
from .fisher_state import blocks_per_flush_slice

__all__ = ["MemoryEstimate", "FisherMemoryError", "estimate_memory", "available_memory", "format_bytes",
           "refuse_if_too_big", "DAMPING_KINDS"]

DAMPING_KINDS = ("absolute", "relative", "auto")
# masks.PrunedMasks: ``pruned`` and ``keep_or_none`` (its negation), one bool each per weight
MASK_BYTES = 2
# write_back / merged_with: the merged masks, their negation, the new masks: bools per weight
MERGE_BYTES = 3
# selection.select_global over all scores (per score): the float32 concatenation, isnan's bool,
# argsort(stable) = sort's float32 values + int64 indices + a scratch of both, the bool mask
SELECT_BYTES_PER_SCORE = 4 + 1 + 12 + 12 + 1
# obs_scores_torch per weight of one piece, float32: padded weight, diag copy, w², 2·diag,
# the quotient, the masked scores (block4/N:M: the g×g diagonal sub-blocks and subset copies
# come on top, ``_score_piece_bytes``)
SCORE_PIECE_FLOATS = 6
# one piece's update outside F⁻¹ copies, float32 per weight: clone, direction, padded w and v,
# the gathered rows, bmm result, difference, masked result (+ bool pads)
UPDATE_PIECE_FLOATS = 8
# F⁻¹-sized copies of one piece's touched blocks: obs/obs_apply finv[active]; joint's
# _masked_solve holds f, the where-copy and the factor, plus LAPACK's work copy (measured 4.0×)
UPDATE_FINV_COPIES = {"obs": 1, "none": 0, "joint": 4, "sequential": 4}
# torch woodbury_update_torch per weight and gradient of a sub-chunk (≤ 8): g (4), u (4), u64 (8),
# g.double() (8), the transposed u64 solve_triangular copies (8), w64 (8), w (4)
WOODBURY_BYTES_PER_GRAD = 44
WOODBURY_SUBCHUNK = 8
# _mean_diag per padded weight: the float32 clamped copy of the diagonal and the bool ~live
MEAN_DIAG_BYTES = 4 + 1
# fisher_invert_torch per INVERT_SLICE of blocks: the inverses (out), and when Cholesky fails,
# _retry_failed_blocks' copy of the failed blocks and their factor, old and new alive together
# while the next retry is formed (measured 5.1 slices with the absolute damp's backup at damp
# 1e-7, m = 16: every block of a slice retried); absolute damping adds its backup of the slice,
# packed storage on a dense kernel the unpacked tile
INVERT_SLICE_COPIES = 5
# AutoDamp.fit per FIT_SLICE of blocks, float64 (s, B, B): F[sel], gᵀg, f_rest, c, the clone and its factor
AUTO_FIT_BLOCK_COPIES = 6
# block_layout: live bool + alive/~mask/cat copies per padded weight; tensor_index int64 (+ cat) per block
LAYOUT_BYTES_PER_WEIGHT, LAYOUT_BYTES_PER_BLOCK = 3, 16
# sequential_order + select_sequential per padded weight: int64 order, float32 cumloss + cat +
# ranks, argsort's indices and values, prefix masks and the float32 contribution
SEQUENTIAL_BYTES_PER_WEIGHT = 8 + 4 * 3 + 12 + 1 + 4


class FisherMemoryError(MemoryError):
    """A prune step would not fit on its device; nothing proportional to d was allocated."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` now (CUDA: mem_get_info; CPU: MemAvailable), None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a prune step needs on its device: ``phases`` (name -> peak bytes of that phase),
    ``total_bytes`` the largest; ``fisher_bytes`` (F⁻¹, float32) and ``buffer_bytes`` (the
    k-gradient buffer) are its two largest persistent parts."""

    num_weights: int
    num_blocks: int
    block_size: int
    chunk_size: int
    fisher_bytes: int
    buffer_bytes: int
    device: str
    available_bytes: int | None
    packed: bool = False
    phases: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return max(self.phases.values()) if self.phases else self.fisher_bytes + self.buffer_bytes

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get) if self.phases else "collect"

    def fits(self, fraction: float) -> bool:
        return self.available_bytes is None or self.total_bytes <= fraction * self.available_bytes

    def __str__(self) -> str:
        avail = "unknown" if self.available_bytes is None else format_bytes(self.available_bytes)
        return (
            f"Fisher state for {self.num_weights:,} weights in {self.num_blocks:,} blocks of {self.block_size}: "
            f"F⁻¹ {format_bytes(self.fisher_bytes)}{' (packed)' if self.packed else ''} + {self.chunk_size}-gradient buffer "
            f"{format_bytes(self.buffer_bytes)}; with masks and temporaries a step peaks at "
            f"{format_bytes(self.total_bytes)} ({self.peak_phase}) on {self.device} (available {avail})"
        )


@dataclass(frozen=True)
class _Sizes:
    """What the phases are counted from: local pieces (F⁻¹ rows) and all tracked weights."""

    pieces: list          # weights of each local piece
    total: int            # all tracked weights (masks, weights copy and selection are not sharded)
    B: int
    k: int
    pattern: Pattern
    fisher_bytes: int
    flush_blocks: int     # blocks per flush slice (fisher_state.blocks_per_flush_slice)

    @property
    def blocks(self) -> list[int]:
        return [-(-n // self.B) for n in self.pieces]

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks)

    @property
    def padded(self) -> int:
        """Weights of the local blocks, padding included."""
        return self.num_blocks * self.B

    @property
    def largest_piece(self) -> int:
        return max(self.blocks, default=0) * self.B

    def dense_block_bytes(self, blocks: int) -> int:
        return blocks * self.B * self.B * 4


def _damping_kind(damping) -> str:
    if isinstance(damping, str):
        if damping not in DAMPING_KINDS:
            raise ValueError(f"damping must be one of {DAMPING_KINDS} or a Damping, got {damping!r}")
        return damping
    if isinstance(damping, AutoDamp):
        return "auto"
    if isinstance(damping, RelativeDamp):
        return "relative"
    if isinstance(damping, AbsoluteDamp) or isinstance(damping, (int, float)):
        return "absolute"
    if isinstance(damping, Damping):
        return "auto"  # a policy of its own: count the largest temporaries of the three
    raise TypeError(f"damping must be one of {DAMPING_KINDS} or a Damping, got {type(damping).__name__}")


def _flush_blocks(s: _Sizes) -> int:
    """Blocks per flush slice (fisher_state.flush_slice_blocks), at most all of them."""
    return min(s.flush_blocks, s.num_blocks)


def _collect_bytes(s: _Sizes, method: str, grad_itemsize: int, fused: bool, packed: bool) -> int:
    """Gradients arriving: the buffer is full, the chunk is applied to F (or F⁻¹). A packed F on
    the torch kernels is applied tile by tile (ops/packed.py): one dense tile (and, direct, its
    packed copy) at a time, the Woodbury temporaries over that tile's blocks only."""
    convert = 4 * max(s.pieces, default=0) if grad_itemsize != 4 else 0  # GradBuffer.add's float32 copy
    if fused:
        return convert
    tile = min(s.dense_block_bytes(s.num_blocks), UNPACK_TILE_BYTES) if packed else 0
    # weights whose blocks one application sees: a flush slice (FisherBuild.flush), or a tile of it
    weights = min(tile // (4 * s.B), _flush_blocks(s) * s.B) if packed else _flush_blocks(s) * s.B
    if method == "woodbury":
        return max(convert, tile + WOODBURY_BYTES_PER_GRAD * min(WOODBURY_SUBCHUNK, s.k) * weights)
    return max(convert, tile + tile * (s.B + 1) // (2 * s.B))


def _invert_bytes(s: _Sizes, kind: str, method: str, buffer: int, packed: bool) -> int:
    """The direct build's finalize: damping's statistics, then the inversion slice by slice."""
    nb = s.num_blocks
    layout = LAYOUT_BYTES_PER_WEIGHT * s.padded + LAYOUT_BYTES_PER_BLOCK * nb
    if method == "woodbury":  # F⁻¹ is built as gradients arrive; start_woodbury's diagonal statistics only
        first_chunk = 2 * 4 * s.k * s.padded if kind != "absolute" else 0
        return buffer + layout + first_chunk + (MEAN_DIAG_BYTES * s.padded if kind != "absolute" else 0)
    slice_bytes = s.dense_block_bytes(min(INVERT_SLICE, nb))
    slices = (INVERT_SLICE_COPIES + (kind == "absolute") + packed) * slice_bytes
    diag = MEAN_DIAG_BYTES * s.padded if kind != "absolute" else 0
    fit = 0
    if kind == "auto":
        sample = min(FIT_SLICE, nb)
        fit = buffer + AUTO_FIT_BLOCK_COPIES * 8 * s.dense_block_bytes(sample) // 4 + 3 * 8 * sample * s.k * s.B
    return layout + max(fit + diag, diag, slices)


def _score_piece_bytes(s: _Sizes, n: int) -> int:
    g = s.pattern.group_size
    floats = SCORE_PIECE_FLOATS + (g if g > 1 else 0)  # group_diag_blocks copies g floats per weight
    if s.pattern.is_nm:
        floats += 3 * (len(s.pattern.subsets) * s.pattern.n_prune) / s.pattern.group_size  # per-subset solves, stacked
    return int(4 * floats * n)


def _per_weight(shape_fn, pattern: Pattern, n: int) -> float:
    """Entries per weight of obs_scores' scores or factors (n a multiple of the group size)."""
    return math.prod(shape_fn(pattern, n)) / n


def _score_bytes(s: _Sizes, update: str, fused: bool, packed: bool) -> int:
    tile = min(s.dense_block_bytes(max(s.blocks, default=0)), UNPACK_TILE_BYTES) if packed and not fused else 0
    return tile + _score_only_bytes(s, update, fused)


def _score_only_bytes(s: _Sizes, update: str, fused: bool) -> int:
    g = s.pattern.group_size
    n = max(g, s.largest_piece - s.largest_piece % g)
    score_pw = _per_weight(score_shape, s.pattern, n)
    if update == "sequential":
        return SEQUENTIAL_BYTES_PER_WEIGHT * s.padded + (0 if fused else _score_piece_bytes(s, s.largest_piece))
    factor_pw = _per_weight(factor_shape, s.pattern, n) if update == "obs" else 0
    kept = 4 * (2 * score_pw + factor_pw) * s.padded  # each piece's scores, their concatenation, factors
    piece = 4 * (score_pw + factor_pw) * s.largest_piece if fused else _score_piece_bytes(s, s.largest_piece)
    return int(kept + piece + SELECT_BYTES_PER_SCORE * score_pw * s.total)


def _update_bytes(s: _Sizes, update: str, fused: bool, packed: bool) -> int:
    factor_pw = _per_weight(factor_shape, s.pattern, max(s.pattern.group_size, s.largest_piece)) if update == "obs" else 0
    kept = int(4 * factor_pw * s.padded) + 1 * s.total + 4 * s.total  # factors, new masks, summed update
    piece = 4 * UPDATE_PIECE_FLOATS * s.largest_piece
    if not fused:
        touched = s.dense_block_bytes(max(s.blocks, default=0))
        if packed:  # dense-only kernels see one unpacked tile at a time, and copy from it
            touched = min(touched, UNPACK_TILE_BYTES)
            piece += touched
        piece += UPDATE_FINV_COPIES[update] * touched
    return kept + piece + MERGE_BYTES * s.total


def _phases(s: _Sizes, *, kind: str, method: str, update: str, packed: bool, fused: bool,
            grad_itemsize: int, buffer: int) -> dict[str, int]:
    """name -> peak bytes of each phase of a step, persistent parts included."""
    base = MASK_BYTES * s.total + s.fisher_bytes
    # TrackedTensors.float32_weights, whatever the weights' dtype, and prune()'s rollback copy
    # of the weights (transaction.Checkpoint; counted at 4 bytes a weight)
    weights_copy = 4 * s.total + 4 * s.total
    per_block = s.fisher_bytes // max(1, s.num_blocks)
    flush_scratch = per_block * _flush_blocks(s)  # FisherBuild.flush's backup slice
    invert_scratch = per_block * min(INVERT_SLICE, s.num_blocks) if method != "woodbury" else 0  # inversion.run_inversion's
    collect = base + buffer + flush_scratch + _collect_bytes(s, method, grad_itemsize, fused, packed)
    return {
        "collect": collect,
        # prune() applies the last chunk first (add_grads leaves a full chunk to the next call),
        # then inverts: the collect phase's peak happens inside prune() too
        "invert": max(collect, base + 4 * s.total + invert_scratch + _invert_bytes(s, kind, method, buffer, packed)),
        "score": base + weights_copy + _score_bytes(s, update, fused, packed),
        "update": base + weights_copy + _update_bytes(s, update, fused, packed),
    }


def estimate_memory(num_weights_per_tensor, block_size: int, chunk_size: int, device="cpu", itemsize: int = 4,
                    packed: bool = False, *, total_weights: int | None = None, damping="absolute",
                    fisher_method: str = "direct", update: str = "obs", pattern="unstructured",
                    grad_itemsize: int = 4, backend: str = "auto") -> MemoryEstimate:
    """Peak bytes of a prune step for tensors (this rank's pieces) of the given sizes, each cut
    into its own blocks of B (SPEC §3); see the module doc for the phases.

    packed: F⁻¹ as upper triangles, B(B+1)/2 floats per block instead of B²; total_weights:
    all tracked weights when the pieces are one rank's share (default: their sum); damping:
    "absolute" | "relative" | "auto" or a Damping; grad_itemsize: bytes per gradient entry
    (2 for fp16 gradients: converted to float32 piece by piece).
    """
    sizes = [int(n) for n in num_weights_per_tensor]
    device = torch.device(device)
    num_blocks = sum(-(-n // block_size) for n in sizes)
    per_block = block_size * (block_size + 1) // 2 if packed else block_size * block_size
    s = _Sizes(sizes, sum(sizes) if total_weights is None else int(total_weights), block_size, chunk_size,
               parse_pattern(pattern), num_blocks * per_block * itemsize, blocks_per_flush_slice(per_block * itemsize, device))
    buffer = chunk_size * num_blocks * block_size * itemsize
    fused = device.type != "cpu" and backend != "torch"
    phases = _phases(s, kind=_damping_kind(damping), method=fisher_method, update=update, packed=packed,
                     fused=fused, grad_itemsize=grad_itemsize, buffer=buffer)
    return MemoryEstimate(
        num_weights=sum(sizes), num_blocks=num_blocks, block_size=block_size, chunk_size=chunk_size,
        fisher_bytes=s.fisher_bytes, buffer_bytes=buffer, device=str(device),
        available_bytes=available_memory(device), packed=packed, phases=phases,
    )


def refuse_if_too_big(est: MemoryEstimate, max_fraction: float) -> None:
    """Raise FisherMemoryError when ``est`` needs more than ``max_fraction`` of the free memory."""
    if not est.fits(max_fraction):
        raise FisherMemoryError(
            f"{est}; that is more than {max_fraction:.0%} of the free memory. "
            "Lower block_size or chunk_size, prune fewer tensors (or split the largest), use update='obs' "
            "rather than 'joint'/'sequential', or use a device with more memory."
        )
