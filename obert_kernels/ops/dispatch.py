"""Backend registry and dispatch for the kernel ops.

Each op's schema is declared once, as a torch custom op (``ops/library.py``), and each
backend folder registers its kernel for the op here (``register``), together with a
``reasons`` function that returns why it cannot serve a given call (an empty list means
it can). The public functions of ``obert_kernels.ops`` resolve the backend from the
arguments' metadata (``resolve_backend``: ``backend="auto"`` walks ``PREFERENCE`` and
takes the first backend with no reasons; an explicit backend that cannot serve raises
``BackendNotSupported`` carrying the reasons, instead of silently falling back) and pass
its name to the custom op, whose implementation runs ``kernel(op, name)``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..specs import BACKENDS  # the names, torch-free: the CLI checks --backend before importing torch
from .packed import packed_block_size

__all__ = [
    "BACKENDS",
    "PREFERENCE",
    "BackendNotSupported",
    "register",
    "registered",
    "not_supported_reasons",
    "auto_skip_reasons",
    "backend_missing_reason",
    "resolve",
    "resolve_packed",
    "resolve_backend",
    "dense_stand_in",
    "kernel",
]

# auto tries these in order; the torch backend serves every call, so it is last. Triton
# comes before CUDA (issue 10, item 7): the Triton kernels' programs run in CI under the
# interpreter, while the CUDA kernels' __global__ code has never run anywhere (no GPU when
# they were written). CUDA stays available by name (backend="cuda"); a GPU benchmark
# (bench/gpu_suite.py) decides the order per op once it has measured both correct. The C++
# CPU kernels (cpp) serve only CPU tensors, so on a CPU they come first in effect (Triton's
# interpreter is kept off auto there), and torch serves whatever they cannot.
PREFERENCE = ("triton", "cuda", "cpp", "torch")


class BackendNotSupported(RuntimeError):
    """An explicitly requested backend cannot serve this call; ``reasons`` says why."""

    def __init__(self, op: str, backend: str, reasons: list[str]):
        self.op, self.backend, self.reasons = op, backend, list(reasons)
        super().__init__(f"backend {backend!r} cannot run {op}: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class _Impl:
    fn: Callable
    reasons: Callable[..., list[str]]
    # reasons that keep "auto" away although an explicit request would run (e.g. Triton's
    # CPU interpreter: it runs when asked for, but auto prefers torch on a CPU)
    auto_reasons: Callable[..., list[str]]
    # reads and writes packed F⁻¹ (ops/packed.py) itself; others get it unpacked tile by tile
    packed: bool = False
    # writes its in-place output in one step: it raises before writing anything, or writes it
    # all (a caller then needs no backup of what it writes; core/fisher_state.py's flush)
    one_write: bool = False
    # fisher_accumulate only: with upper_only=True it leaves the strict lower triangles alone
    upper_only: bool = False


_REGISTRY: dict[str, dict[str, _Impl]] = {}
# backend -> why it is absent altogether (failed import, missing extension), if known
_UNAVAILABLE: dict[str, str] = {}


def _no_reasons(**_call) -> list[str]:
    return []


def register(op: str, backend: str, fn: Callable, reasons: Callable[..., list[str]] | None = None,
             auto_reasons: Callable[..., list[str]] | None = None, packed: bool = False, one_write: bool = False,
             upper_only: bool = False):
    """Register ``fn`` as ``backend``'s implementation of ``op``.

    reasons(**call) -> why it cannot serve a call; auto_reasons(**call) -> why "auto"
    should not pick it for a call it could serve; packed: fn also takes a packed F⁻¹
    (num_blocks, B(B+1)/2) directly (its reasons then see packed calls too); one_write and
    upper_only: the capabilities of ``_Impl`` of those names.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = _Impl(fn, reasons or _no_reasons, auto_reasons or _no_reasons, packed,
                                                  one_write, upper_only)


@contextmanager
def registered(op: str, backend: str, fn: Callable, reasons: Callable[..., list[str]] | None = None,
               auto_reasons: Callable[..., list[str]] | None = None, packed: bool = False, one_write: bool = False,
               upper_only: bool = False) -> Iterator[None]:
    """``register`` for the length of a ``with`` block, then put back what was registered
    before (or nothing): a temporary implementation, e.g. a test's stand-in."""
    saved = _REGISTRY.get(op, {}).get(backend)
    register(op, backend, fn, reasons, auto_reasons, packed, one_write, upper_only)
    try:
        yield
    finally:
        if saved is None:
            del _REGISTRY[op][backend]
        else:
            _REGISTRY[op][backend] = saved


def mark_unavailable(backend: str, why: str) -> None:
    """Record why a whole backend could not be loaded (shown by not_supported_reasons)."""
    _UNAVAILABLE[backend] = why


def auto_skip_reasons(op: str, backend: str, **call) -> list[str]:
    """Why "auto" passes over ``backend`` for a call it could serve (e.g. Triton's CPU
    interpreter); [] when auto would take it or when it has no kernel for ``op``."""
    impl = _REGISTRY.get(op, {}).get(backend)
    return [] if impl is None else impl.auto_reasons(**call)


def backend_missing_reason(backend: str) -> str | None:
    """Why ``backend`` registered no kernel at all (failed import, extension not built), or
    None when it registered at least one."""
    if any(backend in kernels for kernels in _REGISTRY.values()):
        return None
    return _UNAVAILABLE.get(backend, f"{backend} backend registered no ops")


def not_supported_reasons(op: str, backend: str, **call) -> list[str]:
    """Why ``backend`` cannot run ``op`` on these arguments; [] when it can."""
    if backend not in BACKENDS:
        return [f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)} or 'auto'"]
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        return [_UNAVAILABLE.get(backend, f"{backend} backend has no {op} implementation")]
    return impl.reasons(**call)


def resolve_packed(op: str, backend: str, **call) -> tuple[str, Callable] | None:
    """For a packed F⁻¹: the backend that reads packed storage itself and serves this call,
    or None when the call should run tile by tile on dense blocks (ops/packed.py).

    "auto" walks PREFERENCE and stops at the first backend that serves the call, as
    packed (a packed-native backend) or as dense tiles (then None): a packed-native backend
    later in PREFERENCE does not jump the order. An explicit packed-native backend that
    cannot serve raises BackendNotSupported; an explicit dense-only backend returns None
    (it will get dense tiles).
    """
    if backend == "auto":
        dense_call = dict(call, finv=dense_stand_in(call["finv"]))
        for name in PREFERENCE:
            impl = _REGISTRY.get(op, {}).get(name)
            if impl is None:
                continue
            serves = call if impl.packed else dense_call
            if not impl.reasons(**serves) and not impl.auto_reasons(**serves):
                return (name, impl.fn) if impl.packed else None
        return None
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None or not impl.packed:
        return None
    reasons = impl.reasons(**call)
    if reasons:
        raise BackendNotSupported(op, backend, reasons)
    return backend, impl.fn


def resolve(op: str, backend: str, **call) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for ``backend`` ("auto" or a name) and a call."""
    if backend == "auto":
        collected = {}
        for name in PREFERENCE:
            reasons = not_supported_reasons(op, name, **call)
            if not reasons:
                reasons = _REGISTRY[op][name].auto_reasons(**call)
            if not reasons:
                return name, _REGISTRY[op][name].fn
            collected[name] = reasons
        raise BackendNotSupported(op, "auto", [f"{k}: {'; '.join(v)}" for k, v in collected.items()])
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from 'auto', {', '.join(map(repr, BACKENDS))}")
    reasons = not_supported_reasons(op, backend, **call)
    if reasons:
        raise BackendNotSupported(op, backend, reasons)
    return backend, _REGISTRY[op][backend].fn


def kernel(op: str, backend: str) -> "_Impl":
    """The registered kernel of ``backend`` for ``op`` (its ``fn`` and whether it reads packed
    storage); the custom ops' implementations call this with the name the wrapper resolved."""
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        raise BackendNotSupported(op, backend, not_supported_reasons(op, backend))
    return impl


def resolve_backend(op: str, backend: str, finv: torch.Tensor, **call) -> str:
    """The concrete backend name for a call, from its arguments' metadata only.

    finv dense (num_blocks, B, B) or packed (num_blocks, B(B+1)/2). For packed storage,
    resolve_packed says whether a backend that reads it itself serves the call; otherwise
    the backend is chosen as for the dense tiles the op will give it (ops/implementations.py),
    which the reasons see as a stand-in with the tiles' dtype, device and block shape (no
    data is unpacked here).
    """
    if finv.dim() == 2:
        native = resolve_packed(op, backend, finv=finv, **call)
        if native:
            return native[0]
        finv = dense_stand_in(finv)
    return resolve(op, backend, finv=finv, **call)[0]


def dense_stand_in(packed: torch.Tensor) -> torch.Tensor:
    """A (num_blocks, B, B) tensor with packed's dtype and device and one stored element
    (a broadcast view): what the reasons of a dense-only backend look at."""
    B = packed_block_size(packed.shape[1])
    return packed.new_empty((1, 1, 1)).expand(packed.shape[0], B, B)
