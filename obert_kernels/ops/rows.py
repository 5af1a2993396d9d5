"""The gradient buffer's one-pass copy: a gradient's tensors into one row of the block buffer.

Not a Fisher op (no schema, no torch backend: the pruner's per-tensor torch path is the
fallback, ``core/grad_buffer.py``): each device has one kernel, which copies every tensor,
applies the keep-masks and checks that every value it read is finite, in one pass.

- CPU: the C++ extension (``backends/cpp``, on torch's OpenMP threads where it can; faster than
  torch's per-tensor copies with keep-masks and without, see ``copy_rows_cpp``);
- CUDA: one Triton launch for all tensors (``backends/triton/rows.py``), where the per-tensor
  path launched a copy a tensor.

``copy_rows_reasons`` says why a call cannot be served (an empty list: it can);
``copy_rows`` checks everything before its kernel writes anything.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .backends import cpp

__all__ = ["copy_rows", "copy_rows_reasons", "copy_rows_backend"]


def _triton_kernel() -> tuple[Callable | None, str]:
    try:
        from .backends import triton as triton_backend
        from .backends.triton import rows
    except ImportError as exc:  # pragma: no cover - depends on the installation
        return None, f"the Triton backend is not available ({exc})"
    if triton_backend.INTERPRETED:  # kernels decorated under TRITON_INTERPRET=1 run on the host
        return None, "the Triton kernels run under the interpreter (TRITON_INTERPRET=1): not on a GPU"
    return rows.copy_rows_triton, ""


def copy_rows_backend(device) -> str | None:
    """The backend whose kernel copies rows on ``device`` ("cpp", "triton"), or None."""
    kind = torch.device(device).type
    return {"cpu": "cpp", "cuda": "triton"}.get(kind)


def _kernel(device) -> tuple[Callable | None, str]:
    backend = copy_rows_backend(device)
    if backend == "cpp":
        return (cpp.copy_rows_cpp, "") if cpp.available() else (None, cpp.status())
    if backend == "triton":
        return _triton_kernel()
    return None, f"no one-pass copy kernel for {device}"


def copy_rows_reasons(device, sources: list[torch.Tensor], keeps: list[torch.Tensor | None]) -> list[str]:
    """Why ``copy_rows`` cannot copy these into a buffer on ``device`` (an empty list: it can)."""
    return _kernel_and_reasons(torch.device(device), sources, keeps)[1]


def _kernel_and_reasons(device: torch.device, sources, keeps) -> tuple[Callable | None, list[str]]:
    """(the device's kernel or None, why this call cannot be served)."""
    kernel, why = _kernel(device)
    out = [] if kernel is not None else [why]
    if any(not _on(s, device) or s.dtype != torch.float32 or not s.is_contiguous() for s in sources):
        out.append(f"every gradient must be a contiguous float32 tensor on {device} (others are converted first)")
    if any(k is not None and (k.dtype != torch.bool or not k.is_contiguous() or not _on(k, device)) for k in keeps):
        out.append(f"keep-masks must be contiguous bool tensors on {device}")
    return kernel, out


def _on(t: torch.Tensor, device: torch.device) -> bool:
    """t is on ``device`` (a device without an index: on one of that type; the kernel reads raw
    addresses, so a gradient on another GPU than the buffer must not pass)."""
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def copy_rows(buffer: torch.Tensor, row: int, sources: list[torch.Tensor], keeps: list[torch.Tensor | None],
              first_blocks: list[int]) -> int:
    """buffer (num_blocks, k, B) float32 ← each flat gradient sources[t] (d_t,) float32 at row ``row``
    of blocks [first_blocks[t], first_blocks[t] + ceil(d_t/B)), +0.0 where keeps[t] ((d_t,) bool or
    None) is False, in one pass that also checks every value (kept or not) is finite.

    Returns the index of the first source holding a NaN or ±inf (its row is written all the same:
    the caller leaves it as scratch), or -1. Raises ValueError, nothing written, on bad arguments.
    """
    if buffer.dim() != 3 or buffer.dtype != torch.float32 or not buffer.is_contiguous():
        raise ValueError("the buffer must be a contiguous float32 (num_blocks, k, B) tensor")
    nb, k, B = buffer.shape
    kernel, reasons = _kernel_and_reasons(buffer.device, sources, keeps)
    if reasons:
        raise ValueError("; ".join(reasons))
    if not (len(sources) == len(keeps) == len(first_blocks)):
        raise ValueError("sources, keeps and first_blocks must have one entry per tensor")
    for src, keep, first in zip(sources, keeps, first_blocks):
        if first < 0 or first + -(-src.numel() // B) > nb:
            raise ValueError(f"blocks [{first}, {first} + ceil({src.numel()}/{B})) are outside the buffer's {nb}")
        if keep is not None and keep.numel() != src.numel():
            raise ValueError(f"a keep-mask of {keep.numel()} values for a gradient of {src.numel()}")
    if not 0 <= row < k:
        raise ValueError(f"row {row} is outside the buffer's {k} rows")
    # the launch and its flags on the buffer's GPU, whichever is current
    with torch.cuda.device(buffer.device) if buffer.device.type == "cuda" else contextlib.nullcontext():
        return kernel(buffer, row, sources, keeps, first_blocks)
