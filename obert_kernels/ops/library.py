"""The kernel ops as torch custom ops: ``torch.ops.obert_kernels.<op>``.

Each op's schema is declared here, once, with what it mutates (``Tensor(a!)``), together
with a fake kernel that gives the outputs' shapes and dtypes from the inputs' metadata
(torch.compile, torch.export and FakeTensor use it; nothing is computed). The schema's
``str backend`` is the concrete backend the public wrapper (``obert_kernels.ops``)
resolved from the arguments' metadata; the op's one implementation
(ops/implementations.py, registered for every device) runs that backend's kernel, which
each backend folder registers in ops/dispatch.py (``backends/*/__init__.py: register_all``).
``str pattern`` is ``Pattern.name`` ("unstructured", "block4", "N:M").

Mutating ops return nothing (the public wrappers return the mutated tensor). A finv or
fisher argument is dense (num_blocks, B, B) or packed (num_blocks, B(B+1)/2), float32 or
float64; shapes otherwise as the public functions' docstrings give them.

Declared with ``torch.library.define`` and a CompositeExplicitAutograd implementation (as
bitsandbytes' _ops.py does), not ``torch.library.custom_op``: measured on tiny tensors
(2 shared CPU cores, loaded, 2026-11-30), a call through a custom_op-made op cost ~200 µs
more than the function it wraps (its autograd and in-place handling are Python kernels),
through a defined op ~12 µs. No op has a backward: gradients through one raise or warn
(the autograd fallback), which opcheck's test_autograd_registration accepts. The version
counter of a mutated argument is bumped by the dispatcher as for any in-place op.

Requires torch ≥ 2.4 (torch.library.register_fake and opcheck).
"""
from __future__ import annotations

import torch

from . import implementations as impl
from .blocks import factor_shape, score_shape, units_per_block
from .implementations import pattern_named
from .packed import packed_block_size

__all__ = ["NAMESPACE", "SCHEMAS", "OPS"]

NAMESPACE = "obert_kernels"

SCHEMAS = {
    "woodbury_update": "(Tensor(a!) finv, Tensor grads, int num_grads, str backend) -> ()",
    "fisher_accumulate": "(Tensor(a!) fisher, Tensor grads, int num_grads, bool upper_only, str backend) -> ()",
    "fisher_invert": "(Tensor(a!) fisher, float damp, str backend) -> ()",
    "obs_scores": "(Tensor weight, Tensor finv, str pattern, Tensor? pruned, str backend) -> Tensor",
    "obs_scores_factors": "(Tensor weight, Tensor finv, str pattern, Tensor? pruned, str backend) -> (Tensor, Tensor)",
    "obs_update": "(Tensor(a!) weight, Tensor finv, Tensor prune_mask, str pattern, str update, str backend) -> ()",
    "obs_update_factors": "(Tensor(a!) weight, Tensor finv, Tensor prune_mask, Tensor factors, str pattern, "
                          "str backend, str apply_backend) -> ()",
    "obs_apply": "(Tensor(a!) weight, Tensor finv, Tensor direction, Tensor prune_mask, str backend) -> ()",
    "sequential_order": "(Tensor weight, Tensor finv, str pattern, Tensor? pruned, str backend) -> (Tensor, Tensor)",
}


def _obs_scores(weight, finv, pattern, pruned, backend):
    return impl.obs_scores(weight, finv, pattern, pruned, False, backend)


def _obs_scores_factors(weight, finv, pattern, pruned, backend):
    return impl.obs_scores(weight, finv, pattern, pruned, True, backend)


IMPLEMENTATIONS = {
    "woodbury_update": impl.woodbury_update,
    "fisher_accumulate": impl.fisher_accumulate,
    "fisher_invert": impl.fisher_invert,
    "obs_scores": _obs_scores,
    "obs_scores_factors": _obs_scores_factors,
    "obs_update": impl.obs_update,
    "obs_update_factors": impl.obs_update_factors,
    "obs_apply": impl.obs_apply,
    "sequential_order": impl.sequential_order,
}


# ---- fake kernels: shapes and dtypes only -------------------------------------------------
def _nothing(*_args) -> None:
    """Fake kernel of a mutating op: it returns nothing, and its mutation changes no metadata."""
    return None


def _obs_scores_fake(weight, finv, pattern, pruned, backend):
    """(d,) unstructured, (d/4,) block4, (d/M, C(M,N)) N:M; finv.dtype."""
    return finv.new_empty(score_shape(pattern_named(pattern), weight.numel()))


def _obs_scores_factors_fake(weight, finv, pattern, pruned, backend):
    """(scores, factors): factors (d,), (d/4, 4) or (d/M, C(M,N), N); finv.dtype."""
    pat, d = pattern_named(pattern), weight.numel()
    return finv.new_empty(score_shape(pat, d)), finv.new_empty(factor_shape(pat, d))


def _sequential_order_fake(weight, finv, pattern, pruned, backend):
    """(order (num_blocks, U) int64, cumloss (num_blocks, U) finv.dtype), U = B / unit size."""
    nb = finv.shape[0]
    B = packed_block_size(finv.shape[1]) if finv.dim() == 2 else finv.shape[1]
    U = units_per_block(pattern_named(pattern), B)
    return finv.new_empty(nb, U, dtype=torch.int64), finv.new_empty(nb, U)


FAKES = dict.fromkeys(SCHEMAS, _nothing) | {"obs_scores": _obs_scores_fake, "obs_scores_factors": _obs_scores_factors_fake,
                                           "sequential_order": _sequential_order_fake}

_LIBRARY = torch.library.Library(NAMESPACE, "DEF")  # owns the definitions: kept for the process's life
for _name, _schema in SCHEMAS.items():
    _LIBRARY.define(_name + _schema)
    _LIBRARY.impl(_name, IMPLEMENTATIONS[_name], "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{_name}", FAKES[_name], lib=_LIBRARY)

# name -> the op's overload, torch.ops.obert_kernels.<name>.default (what the public functions call)
OPS = {name: getattr(getattr(torch.ops, NAMESPACE), name).default for name in SCHEMAS}
