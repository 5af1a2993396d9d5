"""Small helpers shared by the Triton launchers: tile sizes, launch settings, the interpreter.

Kept apart from ``_triton.py`` (registration) so each kernel file can import them without
a cycle. Imports triton: only loaded when the Triton backend is.
"""
from __future__ import annotations

import triton
from triton.runtime.jit import JITFunction

__all__ = ["MAX_BLOCK", "next_pow2", "is_interpreted", "fix_interpreter_index", "warps_for", "column_warps",
           "grads_layout"]

# A Fisher block is held in registers as a P×P tile, P = next power of two ≥ B. At
# P = 128 that is 16384 fp32 values per program (64 KB): the largest tile we launch.
MAX_BLOCK = 128


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(int(n))


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was decorated under TRITON_INTERPRET=1 (it then runs on the CPU).

    Triton reads TRITON_INTERPRET when ``@triton.jit`` runs, i.e. when obert_kernels.ops is
    first imported, so this is the truth for the life of the process whatever the
    environment says later.
    """
    return not isinstance(kernel, JITFunction)


def fix_interpreter_index() -> None:
    """Make ``range(n)`` over a runtime argument n work in Triton 3.6's interpreter with NumPy ≥ 2.4.

    The interpreter holds a scalar kernel argument as a shape-(1,) array, and Triton 3.6's gives
    its tensors ``__index__ = int(self.handle.data)``. NumPy 2.4 raises TypeError on int() of an
    array with ndim > 0 (1.25–2.3 warn: DeprecationWarning, an error where warnings are), so every
    kernel looping over a runtime count (gradients, pivots, subsets) fails under TRITON_INTERPRET=1
    (TypeError: only 0-dimensional arrays can be converted to Python scalars). Triton
    fixed it upstream (triton-lang/triton#9171: ``int(self.handle.data.squeeze())``, as 3.9
    has); this applies that same fix to an older interpreter. The interpreter only: compiled
    kernels never reach this code, and the kernels themselves are unchanged.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_squeezes_index", False):
        return

    def index(self):
        return int(self.handle.data.squeeze())

    def patched(tensor, *rest):
        patch(tensor, *rest)
        scope = rest[0] if rest else None  # 3.6 and 3.9 pass a scope that undoes this after the launch
        if hasattr(scope, "set_attr"):
            scope.set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    patched._squeezes_index = True
    interpreter._patch_lang_tensor = patched


def warps_for(elements: int) -> int:
    """Warps for a program holding ``elements`` fp32 values: ~32 per thread, 1..16 warps.

    Not yet tuned on a GPU (none was available when this was written): bench/bench_triton_gpu.py
    --tune sweeps the alternatives.
    """
    warps = 1
    while warps < 16 and elements > warps * 32 * 32:
        warps *= 2
    return warps


def column_warps(P: int) -> int:
    """Warps for a P×P tile laid out one column per thread (P // 32 warps, at least 1).

    With that many threads Triton gives each thread a whole column, so reductions over
    rows (axis 0) stay inside a thread; more warps split the rows across threads and turn
    every such reduction into shuffles and barriers (bench/triton_static_report.py).
    """
    return max(1, P // 32)


def grads_layout(grads, num_blocks: int, B: int) -> tuple[int, int, int, int]:
    """Strides (per block, per gradient, per weight) and the weight count d of a gradient chunk.

    grads: (k, d) rows, or block-major (num_blocks, k, B); any strides. Element (block b,
    gradient i, weight j of the block) sits at b·s_block + i·s_grad + j·s_weight and is
    present when b·B + j < d (the last block's padding reads as zero).
    """
    if grads.dim() == 3:
        return grads.stride(0), grads.stride(1), grads.stride(2), num_blocks * B
    return B * grads.stride(1), grads.stride(0), grads.stride(1), grads.shape[1]
