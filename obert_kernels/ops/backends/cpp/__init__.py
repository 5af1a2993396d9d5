"""The C++ CPU backend: the direct Fisher build's two ops, compiled (csrc/cpu/, ``obert_kernels._cpu``).

- ``fisher_accumulate``: by default each block's k×B gradient slice is copied to a cache-resident
  scratch, the upper tiles of its Gram matrix are computed in registers (AVX-512 tiles where the
  CPU has them, else AVX2/FMA; ``isas``, ``use_isa``: the same bits either way), mirrored and
  added (F stays exactly symmetric); with ``upper_only`` (the pruner's flush; it mirrors once per
  step) the rows are read where they are and the sums added straight into the upper triangles,
  no scratch, no padded tiles (the same bits as the upper triangles of the default). Two threads,
  median of 5 (csrc/cpu/fisher_cpu.cpp and core/fisher_state.py record the runs), a chunk of
  k = 32 at d = 10⁶, B = 50: full blocks 62-66 ms, upper only 48 ms, torch's ``baddbmm_``
  63 ms; at MiniLM's 10.6M weights, B = 32: 378-403, 323 and 593 ms (AVX2 tiles, AMD EPYC,
  2026-11-30). The upper-only flush in place, on a 2-core Xeon (2026-12-01): AVX-512 19-21
  against 27-29 ms at d = 10⁶, B = 50, and 162-182 against 174-181 ms at MiniLM's size, where the
  flush is bound by memory; AVX2 22.3-22.6 against 28.6-39.0 and 148-202 against 186-195 ms.
- ``fisher_invert``: four blocks at a time, one per double lane of an AVX2 register: Cholesky,
  the triangular inverse and (L⁻¹)ᵀL⁻¹ in float64, stored as float32. It replaces one LAPACK
  call per 50×50 block (torch loops over the batch), and its error against float64 is the
  float32 rounding of the result alone: 8,192 blocks of 50×50, two threads, 124 ms against
  332 ms for the torch backend, max relative error 2.3e-8 against 1.6e-7 (2026-11-30).

Like the CUDA binding it takes raw pointers: everything is checked here first (device, dtype,
layout, the CPU's AVX2/FMA), and a call it cannot serve gets reasons, so ``auto`` falls back
to the torch backend. The kernels run on ``torch.get_num_threads()`` threads, inside one call
that Python cannot interrupt half-way (a KeyboardInterrupt surfaces after it): torch's own
OpenMP threads where this module shares torch's OpenMP runtime (``threads()`` says which),
else threads of their own.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ... import checks, packed
from .. import optional_extension
from ...dispatch import register
from ..torch.woodbury import fisher_invert_torch

__all__ = ["register_all", "available", "status", "CPU_SUPPORTED", "copy_rows_cpp", "torch_openmp_symbol", "threads",
           "use_openmp", "SHARES_TORCH_OPENMP", "ABI", "stale_reason", "isas", "isa", "use_isa",
           "mirror_upper_cpp", "mirror_upper_reasons", "serves_conversion", "unpack_upper_cpp", "pack_upper_cpp"]

BUILD_HINT = "build it with `pip install -e .` (or `pip install .`) where a C++17 compiler (g++) is found"
# The binding version this module calls (the ``ABI`` of csrc/cpu/fisher_cpu.cpp).
ABI = 8  # 3: the accumulation's ISA can be asked and chosen (isa, set_isa); 4: mirror_upper; 5: packed
# accumulation; 6: set_isa('auto'); 7: packed inversion; 8: unpack_upper, pack_upper


def stale_reason(module) -> str:
    """Why ``module`` was built from older sources than this code calls ("" when it was not)."""
    built = getattr(module, "ABI", 1)
    if built == ABI:
        return ""
    return (f"the built CPU extension predates csrc/cpu/fisher_cpu.cpp (binding version {built}, this code calls "
            f"{ABI}): rebuild it ({BUILD_HINT})")


extension, _IMPORT_ERROR = optional_extension("obert_kernels._cpu")
_STALE = stale_reason(extension) if extension is not None else ""
# asked once: the reasons run while torch.compile traces, which cannot call into the extension
CPU_SUPPORTED = extension is not None and not _STALE and bool(extension.supported())


def available() -> bool:
    """The extension is built and this CPU runs it."""
    return CPU_SUPPORTED


def status() -> str:
    """One line on the extension: not built (and how to build it), unsupported CPU, or ready."""
    if extension is None:
        return f"the CPU extension obert_kernels._cpu is not built ({_IMPORT_ERROR}); {BUILD_HINT}"
    if _STALE:
        return _STALE
    if not CPU_SUPPORTED:
        return "the CPU extension is built, but this CPU lacks AVX2/FMA: the torch backend serves the CPU"
    above = getattr(extension, "AVX512_IN_PLACE_ABOVE", None)
    how = f" (AVX-512 above B = {above}, AVX2 up to it)" if isa() == "auto" and above is not None else ""
    return f"CPU extension ready (AVX2/FMA; accumulation: {isa()}{how}; threads: {threads()})"


# ---- whose threads ---------------------------------------------------------------------
def torch_openmp_symbol() -> int | None:
    """Where torch's CPU library resolves ``omp_get_num_threads`` (its OpenMP runtime's), or None
    where that cannot be asked (not Linux, torch without OpenMP). Loads nothing: the library is
    only looked up (RTLD_NOLOAD), and the lookup searches its dependencies, the runtime among them."""
    library = Path(torch.__file__).resolve().parent / "lib" / "libtorch_cpu.so"
    try:
        handle = ctypes.CDLL(str(library), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        return ctypes.cast(handle.omp_get_num_threads, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def _shares_torch_openmp() -> bool:
    """Whether the module was built with OpenMP and resolved it to torch's runtime (the loader
    reuses a loaded library of the same name): then its threads are torch's intra-op threads.
    Another runtime (an Intel libiomp5 under torch, a differently named libgomp) would not be."""
    if not CPU_SUPPORTED or not extension.openmp_built():
        return False
    return extension.openmp_symbol() == torch_openmp_symbol()


SHARES_TORCH_OPENMP = _shares_torch_openmp()


def use_openmp(on: bool = True) -> bool:
    """Run the kernels on torch's OpenMP threads (``on``) or on threads of their own; returns
    whether they now do (only where ``SHARES_TORCH_OPENMP``: another runtime would bring its own
    threads, which spin on the cores after each kernel while torch works)."""
    if not CPU_SUPPORTED:
        return False
    extension.set_openmp(bool(on) and SHARES_TORCH_OPENMP)
    return bool(extension.openmp_on())


def threads() -> str:
    """Whose threads the kernels run on: "torch's OpenMP threads" or "their own"."""
    return "torch's OpenMP threads" if CPU_SUPPORTED and extension.openmp_on() else "their own"


# ---- which instruction set -----------------------------------------------------------
def isas() -> list[str]:
    """The instruction sets this CPU runs the accumulation with: "avx2", and "avx512" where the CPU
    (and OS) has AVX-512F/VL. Every one gives the same bits (the same chain of fused multiply-adds
    per entry)."""
    if not CPU_SUPPORTED:
        return []
    return ["avx2", "avx512"] if extension.avx512_supported() else ["avx2"]


def isa() -> str | None:
    """The accumulation's instruction set now: "auto" (the default where the CPU has AVX-512: the
    in-place upper-triangle kernel in AVX-512 for B > 32 and in AVX2 up to B = 32, where AVX2 measured
    as fast or faster, see csrc/cpu/fisher_cpu.cpp; the full-block tiles in AVX-512), "avx2" or
    "avx512" (forced); None without the extension."""
    return extension.isa() if CPU_SUPPORTED else None


def use_isa(name: str) -> str:
    """Run the accumulation with ``name``: one of ``isas()``, or "auto"; returns the one before.
    For tests and A/B runs: the default is already "auto" (or "avx2" on a CPU without AVX-512)."""
    if name != "auto" and name not in isas():
        raise ValueError(f"the accumulation runs with 'auto' or one of {isas()} on this CPU, not {name!r}")
    before = isa()
    extension.set_isa(name)
    return before


# ---- reasons -------------------------------------------------------------------------
def _common_reasons(finv: torch.Tensor) -> list[str]:
    if not CPU_SUPPORTED:
        return [_STALE or "this CPU lacks AVX2/FMA, which the CPU extension's kernels need"]
    out = []
    if finv.device.type != "cpu":
        out.append(f"fisher is on {finv.device}: the C++ kernels run on the CPU")
    if finv.dtype != torch.float32:
        out.append(f"the C++ kernels are float32 only, fisher is {finv.dtype} (use backend='torch' for float64)")
    return out


def _accumulate_reasons(finv: torch.Tensor, grads: torch.Tensor, **_) -> list[str]:
    out = _common_reasons(finv)
    if grads.device != finv.device:
        out.append(f"grads are on {grads.device} but fisher is on {finv.device}")
    return out


def _invert_reasons(finv: torch.Tensor, **_) -> list[str]:
    return _common_reasons(finv)


# ---- kernels -------------------------------------------------------------------------
@contextmanager
def _contiguous(fisher: torch.Tensor) -> Iterator[torch.Tensor]:
    """fisher itself when contiguous, else a contiguous copy written back (in one copy_) when
    the block ends without an exception: the kernels take raw pointers to dense blocks."""
    if fisher.is_contiguous():
        yield fisher
        return
    target = fisher.contiguous()
    yield target
    fisher.copy_(target)


def _block_rows(grads: torch.Tensor, num_blocks: int, B: int) -> torch.Tensor:
    """grads as (num_blocks, k, B) float32 whose rows of B are contiguous: block-major input as
    it is (the pruner's buffer slice, any strides with unit last stride), (k, d) padded and
    viewed block-major (no copy when d = num_blocks·B)."""
    if grads.dim() == 2:
        pad = num_blocks * B - grads.shape[1]
        grads = torch.nn.functional.pad(grads, (0, pad)) if pad else grads
        grads = grads.view(grads.shape[0], num_blocks, B).transpose(0, 1)
    grads = grads.to(torch.float32)
    return grads if grads.stride(2) == 1 else grads.contiguous()


def _storage(fisher: torch.Tensor) -> tuple[bool, int]:
    """(packed?, B) of dense (num_blocks, B, B) or packed (num_blocks, B(B+1)/2) blocks."""
    if packed.is_packed(fisher):
        return True, packed.packed_block_size(fisher.shape[1])
    return False, fisher.shape[1]


def fisher_accumulate_cpp(fisher: torch.Tensor, grads: torch.Tensor, num_grads: int,
                          upper_only: bool = False) -> torch.Tensor:
    """fisher (num_blocks, B, B) float32, or packed upper triangles (num_blocks, B(B+1)/2)
    (ops/packed.py, read and written as they are), += Σ g gᵀ / m over a chunk, blockwise, in place.
    grads: (k, d) or block-major (num_blocks, k, B), float32 (others are converted).
    upper_only: only the upper triangles of dense blocks are added to (the lower ones left as
    they were); packed blocks hold nothing else."""
    is_packed, B = _storage(fisher)
    num_blocks = fisher.shape[0]
    rows = _block_rows(grads, num_blocks, B)
    with _contiguous(fisher) as target:
        if num_blocks and rows.shape[1]:
            extension.fisher_accumulate(target.data_ptr(), rows.data_ptr(), num_blocks, rows.shape[1], B,
                                        rows.stride(0), rows.stride(1), 1.0 / num_grads, upper_only, is_packed,
                                        torch.get_num_threads())
    return fisher


def fisher_invert_cpp(fisher: torch.Tensor, damp: float) -> torch.Tensor:
    """fisher (num_blocks, B, B) float32, symmetric, or packed upper triangles (num_blocks,
    B(B+1)/2) (read and written as they are) ← (fisher + λI)⁻¹ blockwise, in place. Dense blocks
    are read by their upper triangles too (so a block not symmetric to the last bit gives the
    bits its packed form gives) and written whole.

    A block whose float64 Cholesky fails is handed to the torch backend's retry (10× more
    damping at a time, with its warning); if that fails too it raises FloatingPointError, with
    the other blocks already inverted and the failed ones holding fisher + λI (the torch
    backend leaves every block at fisher + λI). Non-finite blocks raise at once, nothing changed.
    """
    checks.check_finite_blocks(fisher)
    is_packed, B = _storage(fisher)
    with _contiguous(fisher) as target:
        failed = extension.fisher_invert(target.data_ptr(), fisher.shape[0], B, float(damp), is_packed,
                                         torch.get_num_threads()) if fisher.shape[0] else []
    if failed:
        index = torch.tensor(failed, dtype=torch.long)
        sub = packed.unpack_upper(fisher[index], B) if is_packed else fisher[index]
        try:
            fisher_invert_torch(sub, damp)
        finally:
            fisher[index] = packed.pack_upper(sub) if is_packed else sub
    return fisher


# ---- the mirror after upper-only flushes (ops/mirror.py dispatches) -------------------------
def mirror_upper_reasons(blocks: torch.Tensor) -> list[str]:
    """Why ``mirror_upper_cpp`` cannot serve ``blocks`` (an empty list: it can)."""
    out = _common_reasons(blocks)
    if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        out.append(f"the mirror takes dense (num_blocks, B, B) blocks, not {tuple(blocks.shape)}")
    elif not blocks.is_contiguous():
        out.append("the mirror writes contiguous blocks in place")
    return out


def mirror_upper_cpp(blocks: torch.Tensor) -> torch.Tensor:
    """blocks (num_blocks, B, B) float32, contiguous, on the CPU, in place: each strict lower
    triangle ← the transposed upper one (the bits of ``ops.blocks.mirror_upper_torch``: copies).
    Two threads, medians of 3 (Xeon, 2026-12-01): 20,000 blocks of 50×50 16.5 against 52.6 ms for
    torch's ``where`` over slices; MiniLM's 331,776 blocks of 32×32 100 against 347 ms."""
    if blocks.shape[0]:
        extension.mirror_upper(blocks.data_ptr(), blocks.shape[0], blocks.shape[1], torch.get_num_threads())
    return blocks


# ---- packed storage's conversions (ops/packed.py calls these where they serve) ---------------
def serves_conversion(*tensors: torch.Tensor) -> bool:
    """Whether the C++ copies can convert between these: all float32, contiguous, on the CPU."""
    return CPU_SUPPORTED and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                                 for t in tensors)


def unpack_upper_cpp(packed_blocks: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """dense (num_blocks, B, B) ← packed_blocks (num_blocks, B(B+1)/2) mirrored (``serves_conversion``
    both). Two threads (Xeon, 2026-12-01): see ops/packed.py."""
    if dense.shape[0]:
        extension.unpack_upper(packed_blocks.data_ptr(), dense.data_ptr(), dense.shape[0], dense.shape[1],
                               torch.get_num_threads())
    return dense


def pack_upper_cpp(dense: torch.Tensor, packed_blocks: torch.Tensor) -> torch.Tensor:
    """packed_blocks (num_blocks, B(B+1)/2) ← the upper triangles of dense (num_blocks, B, B)."""
    if dense.shape[0]:
        extension.pack_upper(dense.data_ptr(), packed_blocks.data_ptr(), dense.shape[0], dense.shape[1],
                             torch.get_num_threads())
    return packed_blocks


# ---- the gradient buffer's one-pass copy (ops/rows.py checks the arguments) -----------------
# From this buffer size on the copy writes whole-cache-line rows with streaming stores (where B
# is a multiple of 16), skipping the read for ownership of each destination line: a row written
# now is read by the flush only k gradients later, long evicted from a cache this much smaller
# (the CI machine: 32 MiB of L3 per CCX). A smaller buffer may still be cached at its flush.
# MiniLM (1.36 GB buffer, B = k = 32): 7.7-8.8 ms a gradient against 11.1-11.9 ms with cached stores;
# through bench_pruner_cpu's MiniLM passes, add_grads 5.1 s against 5.9-6.1 s for 256 gradients
# (alternated, 2026-12-01, bench/results/cpu-copy-stream-ab-2026-12-01.txt).
STREAM_MIN_BYTES = 256 << 20


def copy_rows_cpp(buffer: torch.Tensor, row: int, sources: list[torch.Tensor], keeps: list[torch.Tensor | None],
                  first_blocks: list[int]) -> int:
    """``ops.copy_rows`` on the CPU: one C++ pass over every tensor (threads split the blocks).

    Measured (``bench/bench_copy_rows_cpu.py``: against the per-tensor sums and copies in random
    order, 2 threads, medians of 80-150, two runs, 2026-12-01), MiniLM's 36 tensors, 10.6M weights,
    B = k = 32: 11.5 against 14.2-15.1 ms without keep-masks, 14.1-15.1 against 25.5-42.3 ms with
    them (``addcmul`` copies); d = 10⁶, B = 50: 0.8-0.9 against 1.2-1.3 ms. On threads of its own
    instead of torch's OpenMP threads 17.2-19.0 ms and 19.4-20.4 ms (``use_openmp``). With the
    streaming stores (``STREAM_MIN_BYTES``; MiniLM's buffer is 1.36 GB) 8.2 ms without masks and
    11.7 ms with them, against 14.9 and 38.6 ms (one run, medians of 150, same day,
    bench/results/copy-rows-cpu-stream-2026-12-01.txt).
    """
    k, B = buffer.shape[1], buffer.shape[2]
    base, item = buffer.data_ptr(), buffer.element_size()
    dsts = [base + item * (first * k * B + row * B) for first in first_blocks]
    stream = buffer.numel() * item >= STREAM_MIN_BYTES
    return extension.copy_rows([s.data_ptr() for s in sources], [0 if m is None else m.data_ptr() for m in keeps],
                               [s.numel() for s in sources], dsts, k * B, B, stream, torch.get_num_threads())


def register_all() -> None:
    if extension is None:
        raise ImportError(status())
    # one C++ call that checks nothing once it has started
    register("fisher_accumulate", "cpp", fisher_accumulate_cpp, _accumulate_reasons, packed=True, one_write=True,
             upper_only=True)
    register("fisher_invert", "cpp", fisher_invert_cpp, _invert_reasons, packed=True)


use_openmp()
