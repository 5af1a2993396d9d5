"""The kernel ops as torch custom ops: ``torch.ops.obert_kernels.<op>``.

Each op's schema is declared here, once, with what it mutates (``Tensor(a!)``), together
with a fake kernel that gives the outputs' shapes and dtypes from the inputs' metadata
(torch.compile, torch.export and FakeTensor use it; nothing is computed). The schema's
``str backend`` is the concrete backend the public wrapper (``obert_kernels.ops``)
resolved from the arguments' metadata; the op's one implementation
(ops/implementations.py) runs that backend's kernel, which each backend folder registers
in ops/dispatch.py (``backends/*/__init__.py: register_all``). ``str pattern`` is
``Pattern.name`` ("unstructured", "block4", "N:M").

Mutating ops return nothing (the public wrappers return the mutated tensor). A finv or
fisher argument is dense (num_blocks, B, B) or packed (num_blocks, B(B+1)/2), float32 or
float64; shapes otherwise as the public functions' docstrings give them.

Requires torch ≥ 2.4 (torch.library.custom_op, register_fake, opcheck).
"""
from __future__ import annotations

import torch

from . import implementations as impl
from .blocks import factor_shape, score_shape
from .implementations import pattern_named

__all__ = ["NAMESPACE", "OPS", "woodbury_update", "fisher_accumulate", "fisher_invert", "obs_scores",
           "obs_scores_factors", "obs_update", "obs_update_factors", "obs_apply"]

NAMESPACE = "obert_kernels"


@torch.library.custom_op("obert_kernels::woodbury_update", mutates_args=("finv",),
                         schema="(Tensor(a!) finv, Tensor grads, int num_grads, str backend) -> ()")
def woodbury_update(finv, grads, num_grads, backend):
    impl.woodbury_update(finv, grads, num_grads, backend)


@torch.library.custom_op("obert_kernels::fisher_accumulate", mutates_args=("fisher",),
                         schema="(Tensor(a!) fisher, Tensor grads, int num_grads, str backend) -> ()")
def fisher_accumulate(fisher, grads, num_grads, backend):
    impl.fisher_accumulate(fisher, grads, num_grads, backend)


@torch.library.custom_op("obert_kernels::fisher_invert", mutates_args=("fisher",),
                         schema="(Tensor(a!) fisher, float damp, str backend) -> ()")
def fisher_invert(fisher, damp, backend):
    impl.fisher_invert(fisher, damp, backend)


@torch.library.custom_op("obert_kernels::obs_scores", mutates_args=(),
                         schema="(Tensor weight, Tensor finv, str pattern, Tensor? pruned, str backend) -> Tensor")
def obs_scores(weight, finv, pattern, pruned, backend):
    return impl.obs_scores(weight, finv, pattern, pruned, False, backend)


@torch.library.custom_op("obert_kernels::obs_scores_factors", mutates_args=(),
                         schema="(Tensor weight, Tensor finv, str pattern, Tensor? pruned, str backend) -> (Tensor, Tensor)")
def obs_scores_factors(weight, finv, pattern, pruned, backend):
    return impl.obs_scores(weight, finv, pattern, pruned, True, backend)


@torch.library.custom_op("obert_kernels::obs_update", mutates_args=("weight",),
                         schema="(Tensor(a!) weight, Tensor finv, Tensor prune_mask, str pattern, str update, "
                                "str backend) -> ()")
def obs_update(weight, finv, prune_mask, pattern, update, backend):
    impl.obs_update(weight, finv, prune_mask, pattern, update, backend)


@torch.library.custom_op("obert_kernels::obs_update_factors", mutates_args=("weight",),
                         schema="(Tensor(a!) weight, Tensor finv, Tensor prune_mask, Tensor factors, str pattern, "
                                "str backend, str apply_backend) -> ()")
def obs_update_factors(weight, finv, prune_mask, factors, pattern, backend, apply_backend):
    impl.obs_update_factors(weight, finv, prune_mask, factors, pattern, backend, apply_backend)


@torch.library.custom_op("obert_kernels::obs_apply", mutates_args=("weight",),
                         schema="(Tensor(a!) weight, Tensor finv, Tensor direction, Tensor prune_mask, str backend) -> ()")
def obs_apply(weight, finv, direction, prune_mask, backend):
    impl.obs_apply(weight, finv, direction, prune_mask, backend)


# ---- fake kernels: shapes and dtypes only -------------------------------------------------
def _nothing(*_args) -> None:
    """Fake kernel of a mutating op: it returns nothing, and its mutation changes no metadata."""
    return None


for _op in (woodbury_update, fisher_accumulate, fisher_invert, obs_update, obs_update_factors, obs_apply):
    _op.register_fake(_nothing)


@obs_scores.register_fake
def _obs_scores_fake(weight, finv, pattern, pruned, backend):
    """(d,) unstructured, (d/4,) block4, (d/M, C(M,N)) N:M; finv.dtype."""
    return finv.new_empty(score_shape(pattern_named(pattern), weight.numel()))


@obs_scores_factors.register_fake
def _obs_scores_factors_fake(weight, finv, pattern, pruned, backend):
    """(scores, factors): factors (d,), (d/4, 4) or (d/M, C(M,N), N), finv.dtype."""
    pat, d = pattern_named(pattern), weight.numel()
    return finv.new_empty(score_shape(pat, d)), finv.new_empty(factor_shape(pat, d))


OPS = {op._name: op for op in (woodbury_update, fisher_accumulate, fisher_invert, obs_scores, obs_scores_factors,
                               obs_update, obs_update_factors, obs_apply)}
