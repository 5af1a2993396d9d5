"""The gradient buffer: up to k gradients of this rank's blocks, block-major, until a flush.

One pass per gradient (issue 15): each float32 gradient is copied into its buffer row
once, with the keep-mask applied in that same pass only when something of its tensor is
pruned (other dtypes are converted to float32 first, which measured faster than
converting in the strided copy); before anything is written, one sum per tracked tensor
checks it is finite (``check_all_finite``: one synchronization for all of them). Where
``GradBuffer.checks_while_copying``, one pass copies, masks and checks every tensor instead
(``copy_checked`` → ``ops.copy_rows``) and refuses a non-finite gradient after writing the
scratch row, which no count covers: on CUDA one Triton launch (an H200 ``add_grads`` call on
MiniLM's tensors 2.02 → 0.44 ms), on the CPU the C++ pass on torch's OpenMP threads (a MiniLM
gradient 11.5 against 14.2-15.1 ms without keep-masks, 14.1-15.1 against 25.5-42.3 ms with them;
``ops.backends.cpp.copy_rows_cpp``).
Measured on the shared 2-core machine (OMP_NUM_THREADS=1, min of 40, d = 10⁶, B = 50,
k = 32; 2026-11-30): copy into the strided row 1.2–1.5 ms; with the mask, addcmul
(0 + g·keep) 1.8–3.0 ms where ``torch.where``/``masked_fill`` took 5–10 ms (not
vectorised on the CPU for bool masks); the float32 sum 0.07 ms from cache, where
``isfinite(g).all()`` took 3.2 ms (a bool temporary and a second pass).

Why the finiteness check is a per-gradient sum and not one reduction over the chunk at
flush time: a non-finite gradient is refused by the ``add_grads`` call that passes it,
with nothing written (the buffer, its counts and the Fisher state exactly as before the
call), and every gradient accepted stays accepted. A flush-time check would have to refuse
a whole chunk of which k − 1 gradients were already accepted and counted, and a sum over
the source reads the gradient once, as the check over the chunk would, without
temporaries. When sharded, every rank checks the whole gradient (every rank has all of
it), so all ranks refuse the same calls without talking to each other.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from .. import ops
from .sharding import Piece

__all__ = ["GradBuffer", "Counts", "all_finite_quick", "check_all_finite", "check_finite", "copy_checked", "write_row"]


def check_finite(name: str, grad: torch.Tensor) -> None:
    """Raise ValueError if ``grad`` holds a NaN or ±inf.

    One reduction, no temporary: a NaN or ±inf makes the sum non-finite (NaN and inf
    propagate, inf − inf is NaN); finite values make it non-finite only when the sum
    overflows (beyond ±3.4e38 in float32), which the exact ``isfinite`` pass then tells
    apart: a second pass only then.
    """
    if not bool(torch.isfinite(_total(grad))) and not bool(torch.isfinite(grad).all()):
        raise ValueError(f"gradient of {name!r} has non-finite values; nothing was added")


def check_all_finite(names: list[str], grads: list[torch.Tensor]) -> None:
    """Raise ValueError naming the first tensor whose gradient holds a NaN or ±inf.

    The same sums as ``check_finite``, gathered and tested together: one device
    synchronization per gradient sample instead of one per tensor. On an H200 (2026-11-30,
    MiniLM's 36 tensors, m = 256) add_grads took 0.74-0.93 s of which the Fisher kernels were
    0.03-0.18 s, with 36 such synchronizations per call. Only when a sum is non-finite is each
    tensor checked on its own, to name it (and to tell an overflowing sum from a NaN).
    """
    if not grads:
        return
    if all_finite_quick(grads):
        return
    for name, grad in zip(names, grads):
        check_finite(name, grad)


def all_finite_quick(grads: list[torch.Tensor]) -> bool:
    """True if every value is finite; False if one may not be (then check each tensor).

    On CUDA, one multi-tensor max-|g| reduction (``get_total_norm`` with the ∞-norm:
    a NaN or ±inf makes it non-finite, finite values never overflow it): a few kernel launches
    for all tensors where a float32 sum, a cast and a stack per tensor took three each (the H200
    profile of 2026-11-30: ~110 launches per MiniLM gradient, copies included). Elsewhere the
    per-tensor sums (on the CPU no launches to save; a sum measured cheaper than abs-and-max there)."""
    device = grads[0].device
    # CUDA only: foreach=True raises on devices without foreach kernels (MPS, for one)
    if device.type == "cuda" and hasattr(torch.nn.utils, "get_total_norm") and all(g.device == device for g in grads):
        total = torch.nn.utils.get_total_norm(grads, norm_type=float("inf"), foreach=True)
        return bool(torch.isfinite(total))
    totals = torch.stack([_total(g).to(device, torch.float64) for g in grads])
    return bool(torch.isfinite(totals).all())


def _total(grad: torch.Tensor) -> torch.Tensor:
    return torch.sum(grad, dtype=torch.float64 if grad.dtype == torch.float64 else torch.float32)


def write_row(rows: torch.Tensor, flat: torch.Tensor, keep: torch.Tensor | None) -> None:
    """rows (num_blocks, B) float32, a strided view ← a flat (d,) gradient in one pass, the
    last block partly; keep: None, or (d,) bool, False where the gradient is zeroed.

    With a mask, 0 + g·keep: pruned coordinates get +0.0, exactly what masked_fill wrote
    (g·0 alone would be −0.0 for negative g), kept ones g.
    """
    B = rows.shape[1]
    full = flat.numel() // B
    _copy_masked(rows[:full], flat[: full * B].view(full, B), None if keep is None else keep[: full * B].view(full, B))
    if full < rows.shape[0]:
        tail = flat.numel() - full * B
        _copy_masked(rows[full, :tail], flat[full * B :], None if keep is None else keep[full * B :])


def copy_checked(buffer: torch.Tensor, row: int, pieces: list[Piece], grads: Mapping[str, torch.Tensor],
                 keep: Mapping[str, torch.Tensor | None]) -> None:
    """buffer (num_blocks, k, B) row ``row`` ← every piece's whole gradient in one pass
    (``ops.copy_rows``: C++ on the CPU, one Triton launch on CUDA), which also checks each value;
    ValueError naming the first tensor holding a NaN or ±inf (the row is then scratch: the
    caller changes no count)."""
    names = [p.slot.name for p in pieces]
    bad = ops.copy_rows(buffer, row, [grads[n].detach().reshape(-1) for n in names], [keep[n] for n in names],
                        [p.local_block for p in pieces])
    if bad >= 0:
        raise ValueError(f"gradient of {names[bad]!r} has non-finite values; nothing was added")


def _copy_masked(dst: torch.Tensor, src: torch.Tensor, keep: torch.Tensor | None) -> None:
    if keep is None:
        dst.copy_(src)
    else:
        torch.addcmul(torch.zeros((), dtype=dst.dtype, device=dst.device), src, keep, out=dst)


@dataclass(frozen=True)
class Counts:
    """The buffer's counters, replaced as one record (one attribute store), so that an
    exception or interrupt between two statements never leaves them half-updated (Python
    raises a KeyboardInterrupt between bytecodes, never inside one store).

    filled: rows holding gradients not yet applied to the Fisher state (the chunk);
    collected: gradients accepted toward the current estimate (applied or in the chunk);
    last_flushed: rows of the last applied chunk, still in the buffer (AutoDamp's held-out set);
    applied_blocks: blocks of this rank's Fisher state to which the chunk is already applied
    (0 < applied_blocks only while a flush that was interrupted is pending; see FisherBuild.flush).
    """

    filled: int = 0
    collected: int = 0
    last_flushed: int = 0
    applied_blocks: int = 0


class GradBuffer:
    """buffer: (num_blocks, k, B) float32, block-major: each block's k gradient slices are
    contiguous, so the batched products of a flush need no transpose. The zero padding of
    each tensor's last block is written once here and never touched.

    ``counts`` (a ``Counts``) says which rows hold what. Rows past ``filled`` are scratch:
    nothing reads them before they are written, so a gradient whose copy fails half-way
    (its row partly written, ``counts`` not yet changed) leaves the buffer as it was.
    ``buffer`` is None once freed (after the last flush of a prune step).
    """

    def __init__(self, num_blocks: int, chunk_size: int, block_size: int, device):
        self.buffer: torch.Tensor | None = torch.zeros(num_blocks, chunk_size, block_size, device=device)
        self.counts = Counts()

    @property
    def filled(self) -> int:
        return self.counts.filled

    @property
    def collected(self) -> int:
        return self.counts.collected

    @property
    def last_flushed(self) -> int:
        return self.counts.last_flushed

    @property
    def full(self) -> bool:
        return self.buffer is not None and self.filled == self.buffer.shape[1]

    @staticmethod
    def checks_while_copying(device, pieces: list[Piece], grads: Mapping[str, torch.Tensor],
                             keep: Mapping[str, torch.Tensor | None], backend: str) -> bool:
        """Whether ``add`` copies and checks these in one pass into a buffer on ``device``
        (``ops.copy_rows``: C++ on the CPU, one Triton launch on CUDA): backend "auto" or the one
        that serves the copy there; contiguous float32 gradients on that device, one piece per
        tensor covering all of it (sharded, every rank checks the whole gradient and copies only
        its pieces: that stays two passes)."""
        if backend not in ("auto", ops.copy_rows_backend(device)) or len(pieces) != len(grads):
            return False
        if any(p.start != 0 or p.stop != grads[p.slot.name].numel() for p in pieces):
            return False
        return not ops.copy_rows_reasons(device, [grads[p.slot.name] for p in pieces], [keep[p.slot.name] for p in pieces])

    def add(self, pieces: list[Piece], grads: Mapping[str, torch.Tensor], keep: Mapping[str, torch.Tensor | None],
            one_pass: bool = False) -> None:
        """Write one gradient (name -> tensor shaped like its weight) into row ``filled``: this
        rank's pieces of it. keep: name -> (d,) bool keep-mask, or None when nothing of that
        tensor is pruned. one_pass (what ``checks_while_copying`` said): one pass (``copy_checked``)
        copies and checks it (ValueError naming the first non-finite tensor); otherwise it was
        checked before. All or nothing: ``counts`` changes only after the last piece is written."""
        row = self.filled
        if one_pass:
            copy_checked(self.buffer, row, pieces, grads, keep)
        else:
            self._copy_pieces(row, pieces, grads, keep)
        self.counts = replace(self.counts, filled=row + 1, collected=self.collected + 1)

    def _copy_pieces(self, row: int, pieces: list[Piece], grads: Mapping[str, torch.Tensor],
                     keep: Mapping[str, torch.Tensor | None]) -> None:
        for piece in pieces:
            name = piece.slot.name
            # a no-op for float32 gradients on the buffer's device; others are converted first,
            # contiguously: bf16/fp16 -> the strided row took 3.5 ms converting on the way,
            # 0.15 ms + 1.6 ms this way (d = 10⁶, same machine and date as above)
            source = grads[name].detach().reshape(-1)[piece.weights]
            flat = source.to(self.buffer.device, torch.float32)
            mask = None if keep[name] is None else keep[name][piece.weights]
            if mask is not None and source.dtype == torch.float64:
                # a finite double may overflow float32 to ±inf, and inf·0 is NaN: zero the
                # pruned ones in the (fresh) converted copy instead, as masked_fill always did
                flat.masked_fill_(~mask, 0.0)
                mask = None
            write_row(self.buffer[piece.blocks, row], flat, mask)

    def chunk(self) -> torch.Tensor:
        """(num_blocks, filled, B): the gradients not yet applied."""
        return self.buffer[:, : self.filled]

    def mark_progress(self, applied_blocks: int) -> None:
        """The chunk is applied to blocks [0, applied_blocks) of the Fisher state."""
        self.counts = replace(self.counts, applied_blocks=applied_blocks)

    def mark_applied(self) -> None:
        """The chunk was applied to the Fisher state: its rows become the held-out set."""
        self.counts = Counts(0, self.collected, self.filled, 0)

    def last_applied(self) -> torch.Tensor:
        """(num_blocks, last_flushed, B): the last applied chunk."""
        return self.buffer[:, : self.last_flushed]

    def free(self) -> None:
        self.buffer = None
