"""The Triton backend: registers its kernels for every op, with the reasons it cannot serve.

Importing triton at the top is deliberate: without it this module fails to import and
``_backends.py`` marks the backend unavailable with the ImportError's message.

Where it runs: CUDA tensors, compiled; CPU tensors only when the kernels were decorated
under ``TRITON_INTERPRET=1`` (the Triton interpreter: slow, for tests and CPU users who
want to exercise the kernels). ``backend="auto"`` picks Triton only for CUDA tensors with
compiled kernels; on the CPU it stays on torch even under the interpreter.
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (an ImportError here marks the backend unavailable)

from ...dispatch import register
from .util import MAX_BLOCK, fix_interpreter_index, is_interpreted
from . import scores, sequential, update, woodbury
from .scores import obs_scores_triton
from .sequential import sequential_order_triton
from .update import obs_apply_triton, obs_update_triton
from .woodbury import fisher_accumulate_triton, fisher_invert_triton, woodbury_update_triton

__all__ = ["register_all", "INTERPRETED", "KERNELS"]

# every jit kernel of the backend
KERNELS = woodbury.KERNELS + scores.KERNELS + update.KERNELS + sequential.KERNELS

# Decided once, when the kernels were decorated (see util.is_interpreted).
INTERPRETED = is_interpreted(scores.scores_grouped_kernel)
if INTERPRETED:
    fix_interpreter_index()  # Triton 3.6's interpreter with NumPy ≥ 2.4: see util.py
DATA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_GROUP = 16  # block4 / N:M: an M×M sub-block per lane, all C(M, N) subsets in one pass

_CPU_REASON = (
    "the tensors are on the CPU and the Triton kernels are compiled for CUDA devices; to run them "
    "on the CPU through the Triton interpreter (slow; for tests), set TRITON_INTERPRET=1 before "
    "obert_kernels is first imported"
)


def _device_reasons(t: torch.Tensor) -> list[str]:
    kind = t.device.type
    if kind == "cuda" or (kind == "cpu" and INTERPRETED):
        return []
    if kind == "cpu":
        return [_CPU_REASON]
    return [f"the tensors are on {t.device}; the Triton backend runs on CUDA devices (or the CPU interpreter)"]


def _finv_reasons(finv: torch.Tensor, name: str = "finv", max_block: int | None = MAX_BLOCK) -> list[str]:
    out = _device_reasons(finv)
    if finv.dtype != torch.float32:
        out.append(f"{name} is {finv.dtype}; the Triton kernels compute in float32 (use backend='torch' for float64)")
    B = finv.shape[1]
    if max_block is not None and B > max_block:
        out.append(f"block size B={B} > {max_block}: the Triton kernels hold a B×B block in registers "
                   f"(use backend='torch', or B ≤ {max_block})")
    return out


def _data_reasons(t: torch.Tensor, name: str) -> list[str]:
    if t.dtype not in DATA_DTYPES:
        return [f"{name} is {t.dtype}; the Triton kernels read float16, bfloat16, float32 or float64"]
    return []


def _fisher_reasons(finv, grads=None, **_call) -> list[str]:
    out = _finv_reasons(finv)
    if grads is not None:
        out += _data_reasons(grads, "grads")
    return out


def _invert_reasons(finv, **_call) -> list[str]:
    return _finv_reasons(finv, "fisher")


def _scores_reasons(weight, finv, pattern, **_call) -> list[str]:
    out = _finv_reasons(finv, max_block=None) + _data_reasons(weight, "weight")
    if pattern.group_size > MAX_GROUP:
        out.append(f"pattern {pattern.name}: groups of more than {MAX_GROUP} weights are not supported by the "
                   "Triton scoring kernel (use backend='torch')")
    return out


def _update_reasons(weight, finv, pattern, update, **_call) -> list[str]:
    # "none" only zeroes weights: no block is held, any B works
    out = _finv_reasons(finv, max_block=None if update == "none" else MAX_BLOCK) + _data_reasons(weight, "weight")
    if update == "obs" and pattern.group_size > MAX_GROUP:
        out.append(f"pattern {pattern.name}: groups of more than {MAX_GROUP} weights are not supported by the "
                   "Triton update kernel (use backend='torch')")
    return out


def _apply_reasons(weight, finv, direction, **_call) -> list[str]:
    return _finv_reasons(finv) + _data_reasons(weight, "weight") + _data_reasons(direction, "direction")


def _sequential_reasons(weight, finv, pattern, **_call) -> list[str]:
    out = _finv_reasons(finv) + _data_reasons(weight, "weight")
    if pattern.kind == "block" and pattern.group_size & (pattern.group_size - 1):
        out.append(f"pattern {pattern.name}: the Triton sequential kernel reshapes the tile into groups of a power of two")
    return out


def _auto_reasons(finv, **_call) -> list[str]:
    """Why "auto" should not pick Triton although it could run: only CUDA, only compiled."""
    if finv.device.type != "cuda":
        return [f"auto uses Triton only on CUDA devices (tensors are on {finv.device.type}; "
                "the interpreter runs only when backend='triton' is asked for)"]
    if INTERPRETED:
        return ["the Triton kernels are interpreted (TRITON_INTERPRET=1): auto leaves them to explicit requests"]
    return []


def register_all() -> None:
    register("woodbury_update", "triton", woodbury_update_triton, _fisher_reasons, _auto_reasons)
    register("fisher_accumulate", "triton", fisher_accumulate_triton, _fisher_reasons, _auto_reasons)
    register("fisher_invert", "triton", fisher_invert_triton, _invert_reasons, _auto_reasons)
    register("obs_scores", "triton", obs_scores_triton, _scores_reasons, _auto_reasons)
    register("obs_update", "triton", obs_update_triton, _update_reasons, _auto_reasons)
    register("obs_apply", "triton", obs_apply_triton, _apply_reasons, _auto_reasons)
    register("sequential_order", "triton", sequential_order_triton, _sequential_reasons, _auto_reasons)
