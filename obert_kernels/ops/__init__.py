"""The three kernels of SPEC §2 behind one dispatch (``backend="auto" | "torch" | "triton" | "cuda"``).

Every function checks its arguments once, resolves the backend from their metadata, and
calls the torch custom op ``torch.ops.obert_kernels.<op>`` (ops/library.py) with that
backend's name; so a function calling these compiles with ``torch.compile(fullgraph=True)``.
``not_supported_reasons(op, backend, **call)`` says why a backend cannot serve a call;
``backend="auto"`` takes the first of ``PREFERENCE`` that can, an explicit backend raises
``BackendNotSupported`` with the reasons.
"""
from __future__ import annotations

import torch

from .patterns import Pattern, parse_pattern
from . import checks
from . import packed
from .dispatch import BACKENDS, PREFERENCE, BackendNotSupported, not_supported_reasons, resolve_backend
from .dispatch import register, resolve, resolve_packed  # noqa: F401  (importable from here before the layout move)
from .packed import init_finv_packed, pack_upper, unpack_upper
from .blocks import check_groups, factor_shape
from .reference import fisher_inverse_ref, obs_factors_ref, obs_scores_ref, obs_update_ref, sequential_order_ref
from .backends.torch.update import UPDATES, obs_direction
from .backends.torch.woodbury import init_finv, naive_woodbury_update
# the torch kernels were importable from obert_kernels.ops before they moved to backends/torch/
from .backends.torch.scores import obs_scores_torch  # noqa: F401,E402
from .backends.torch.update import obs_apply_torch, obs_update_torch  # noqa: F401,E402
from .backends.torch.woodbury import fisher_accumulate_torch, fisher_invert_torch, woodbury_update_torch  # noqa: F401,E402
from . import library  # noqa: F401  (declares torch.ops.obert_kernels.*)
# the gradient buffer's one-pass copy and finiteness check (C++ on the CPU, Triton on CUDA; not a Fisher op)
from .rows import copy_rows, copy_rows_backend, copy_rows_reasons  # noqa: E402
# the mirror after upper-only flushes (C++ on the CPU where it can, else torch; not a Fisher op)
from .mirror import mirror_upper  # noqa: E402

__all__ = [
    "BACKENDS",
    "copy_rows",
    "copy_rows_backend",
    "copy_rows_reasons",
    "PREFERENCE",
    "BackendNotSupported",
    "not_supported_reasons",
    "init_finv",
    "init_finv_packed",
    "pack_upper",
    "unpack_upper",
    "woodbury_update",
    "fisher_accumulate",
    "mirror_upper",
    "fisher_invert",
    "obs_scores",
    "obs_update",
    "obs_direction",
    "factor_shape",
    "naive_woodbury_update",
    "fisher_inverse_ref",
    "obs_scores_ref",
    "obs_update_ref",
    "obs_factors_ref",
    "UPDATES",
    "sequential_order",
    "sequential_order_ref",
]

def woodbury_update(finv: torch.Tensor, grads: torch.Tensor, num_grads: int, *, backend: str = "auto",
                    check_finite: bool = True) -> torch.Tensor:
    """Apply a chunk of gradients to F⁻¹ by Woodbury (SPEC §2a), in place; returns finv.

    finv: (num_blocks, B, B) float32 (float64 on the torch backend), symmetric positive definite,
    or packed (num_blocks, B(B+1)/2) (ops/packed.py); grads: (k, d) with
    (num_blocks-1)·B < d ≤ num_blocks·B (missing padding is zero), or block-major
    (num_blocks, k, B); any float dtype; num_grads: m, the 1/m of the empirical Fisher.
    A NaN or ±inf in grads raises ValueError before finv changes (``checks.check_finite_input``;
    not while torch.compile traces). check_finite=False skips that check, for a caller that
    has checked every gradient of the chunk already (FisherPruner checks each in add_grads).
    """
    checks.check_finv(finv)
    grads = checks.check_grads(grads, finv)
    # one aminmax over the chunk: 3.6 ms against 600 ms for this op (torch backend, 4000
    # blocks of 48, k = 32, one CPU thread, loaded machine, 2026-11-30): 0.6%
    if check_finite:
        checks.check_finite_input(grads, "grads")
    num_grads = checks.check_num_grads(num_grads)
    name = resolve_backend("woodbury_update", backend, finv, grads=grads)
    torch.ops.obert_kernels.woodbury_update.default(finv, grads, num_grads, name)
    return finv


def fisher_accumulate(fisher: torch.Tensor, grads: torch.Tensor, num_grads: int, *, backend: str = "auto",
                      check_finite: bool = True, upper_only: bool = False) -> torch.Tensor:
    """Direct path of SPEC §2a, step 1: fisher += Σ g gᵀ / m over a chunk, in place.

    grads: (k, d) or block-major (num_blocks, k, B), as for woodbury_update.

    fisher: (num_blocks, B, B) float32/float64 (or packed), zero before the first chunk.
    A NaN or ±inf in grads raises ValueError before fisher changes (not while torch.compile
    traces); check_finite=False skips that check, for a caller that has checked every gradient
    of the chunk already. upper_only=True lets a backend add to the upper triangles (j ≥ i) of
    dense blocks only and leave the strict lower ones stale (the cpp backend does, saving ~25%
    of a flush; others write both): the caller then mirrors the upper triangles itself before
    anything reads a whole block (``mirror_upper``), as FisherPruner does once per prune step.
    """
    checks.check_finv(fisher, "fisher")
    grads = checks.check_grads(grads, fisher)
    # 3.6 ms against 54 ms for this op on the chunk above (7%). FisherPruner passes
    # check_finite=False: its add_grads checked each gradient, and on MiniLM's 36 tensors this
    # second read of the chunk (1.4 GB at k = 32) was ~8 ms a gradient (issue 15)
    if check_finite:
        checks.check_finite_input(grads, "grads")
    num_grads = checks.check_num_grads(num_grads)
    name = resolve_backend("fisher_accumulate", backend, fisher, grads=grads)
    torch.ops.obert_kernels.fisher_accumulate.default(fisher, grads, num_grads, bool(upper_only), name)
    return fisher


def fisher_invert(fisher: torch.Tensor, damp: float, *, backend: str = "auto") -> torch.Tensor:
    """Direct path, step 2: fisher ← (fisher + λI)⁻¹ per block, in place (Cholesky; a block
    that fails is retried with more damping and a warning)."""
    checks.check_finv(fisher, "fisher")
    damp = checks.check_damp(damp)
    name = resolve_backend("fisher_invert", backend, fisher)
    torch.ops.obert_kernels.fisher_invert.default(fisher, float(damp), name)
    return fisher


def obs_scores(weight: torch.Tensor, finv: torch.Tensor, pattern: "str | Pattern" = "unstructured", pruned: torch.Tensor | None = None, *,
               return_factors: bool = False, backend: str = "auto"):
    """Saliency scores of one tensor (SPEC §2b).

    weight: any shape with d elements (flattened row-major); finv: (ceil(d/B), B, B), or
    packed (ceil(d/B), B(B+1)/2);
    pruned: optional bool with d elements, True where already pruned (scores −∞).
    Returns, in finv.dtype: unstructured (d,); block4 (d/4,); N:M (d/M, C(M,N)), one
    score per N-subset in ``Pattern.subsets`` order.
    return_factors: return (scores, factors), the per-candidate solves ([F⁻¹]_SS)⁻¹ w_S
    that scoring computes anyway — unstructured (d,), block4 (d/4, 4), N:M (d/M, C(M,N), N)
    — for ``obs_update(..., factors=)`` so the "obs" update does not solve them again.

    A NaN or ±inf weight, or an F⁻¹ block with a diagonal entry ≤ 0 or non-finite (not
    positive definite), raises ValueError. Not checked, as it would cost a Cholesky per
    block (~90x unstructured scoring): that F⁻¹ is positive definite off the diagonal, or
    finite there. FisherPruner's F⁻¹ is (Cholesky in fisher_invert, which refuses
    non-finite blocks; Woodbury updates of (1/λ)I); a caller passing its own checks it
    (``torch.linalg.cholesky_ex(finv).info``). Under torch.compile no check is made.
    """
    pattern = parse_pattern(pattern)
    _, B = checks.check_finv(finv)
    checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    checks.check_mask(pruned, weight, "pruned")
    checks.check_finite_input(weight, "weight")  # 0.1 ms at d = 192k (3% of unstructured scoring)
    # diagonal > 0 and finite: 3.1 ms at 4000 blocks of 48, as long as unstructured scoring
    # itself (3.0 ms; both read the strided diagonal), 1.5% of 2:4 scoring (204 ms), ~1% of
    # the prune step's Cholesky (274 ms); the full positive-definite check is not made here
    checks.check_finv_diagonal(finv)
    name = resolve_backend("obs_scores", backend, finv, weight=weight, pattern=pattern, return_factors=return_factors)
    # scores carry no autograd history (the kernels read weight.detach()), as before the ops were custom ops
    op = torch.ops.obert_kernels.obs_scores_factors.default if return_factors else torch.ops.obert_kernels.obs_scores.default
    return op(weight.detach(), finv, pattern.name, pruned, name)


def obs_update(weight: torch.Tensor, finv: torch.Tensor, prune_mask: torch.Tensor, pattern: "str | Pattern" = "unstructured", update: str = "obs", *,
               factors: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Compensate the remaining weights for the newly pruned ones and zero those (SPEC §2c).

    In place on ``weight`` (any shape, d elements, any float dtype; computed in
    finv.dtype); finv: (ceil(d/B), B, B), or packed (ceil(d/B), B(B+1)/2); prune_mask:
    bool with d elements, True where newly pruned; update: "obs" | "joint" | "none".
    factors: for update="obs" only, what ``obs_scores(..., return_factors=True)`` returned
    for the same weight and F⁻¹: the update then takes each pruned group's solve from them
    and only applies δw = −F⁻¹ v (op "obs_apply"). Groups whose newly pruned weights are
    not one scored candidate make it solve as without factors. Returns weight.
    """
    pattern = parse_pattern(pattern)
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    _, B = checks.check_finv(finv)
    checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    checks.check_mask(prune_mask, weight, "prune_mask")
    if factors is not None:
        checks.check_factors(factors, weight, finv, pattern, update)
    name = resolve_backend("obs_update", backend, finv, weight=weight, pattern=pattern, update=update)
    if factors is None:
        with torch.no_grad():  # the kernels write weight under no_grad, as before the ops were custom ops
            torch.ops.obert_kernels.obs_update.default(weight, finv, prune_mask, pattern.name, update, name)
        return weight
    # the direction obs_direction gathers from the factors has their dtype and device: what obs_apply's reasons read
    apply_name = resolve_backend("obs_apply", backend, finv, weight=weight, direction=factors)
    with torch.no_grad():
        torch.ops.obert_kernels.obs_update_factors.default(weight, finv, prune_mask, factors, pattern.name, name, apply_name)
    return weight


def sequential_order(weight: torch.Tensor, finv: torch.Tensor, pattern: "str | Pattern" = "unstructured",
                     pruned: torch.Tensor | None = None, *, backend: str = "auto"):
    """Each Fisher block's greedy removal order and cumulative losses (SPEC §2d, sequential OBS).

    weight: any shape with d elements (flattened row-major), any float dtype; finv:
    (ceil(d/B), B, B) float32/64, or packed (ceil(d/B), B(B+1)/2), left intact; pruned:
    optional bool with d elements, True where already pruned (never a candidate).
    Returns (order (num_blocks, U) int64, cumloss (num_blocks, U) in finv.dtype), U = B / unit
    size (B for unstructured and N:M, B/4 for block4): order[b, k] is the unit block b removes
    at step k (−1 once none is left), cumloss[b, k] the loss of its first k+1 removals (+inf
    after). ops/backends/torch/sequential.py gives the semantics in full.
    """
    pattern = parse_pattern(pattern)
    _, B = checks.check_finv(finv)
    d = checks.check_weight(weight, finv)
    pattern.check_block_size(B)
    checks.check_mask(pruned, weight, "pruned")
    check_groups(d, pattern)
    name = resolve_backend("sequential_order", backend, finv, weight=weight, pattern=pattern)
    return torch.ops.obert_kernels.sequential_order.default(weight.detach(), finv, pattern.name, pruned, name)


def _load_backends() -> None:
    from .backends import load_backends

    load_backends()


_load_backends()
