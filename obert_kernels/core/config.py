"""FisherPruner's constructor arguments, checked once, as a frozen ``PrunerConfig``.

``PrunerConfig.from_args`` checks the arguments that need no tensor (in the order
FisherPruner always checked them, so the first error reported is the same);
``resolved_for`` then settles what depends on the tracked tensors' device (the Fisher
build "auto" picks, the damping's needs, whether an explicit backend serves that device).
Nothing here allocates but the one B×B sample block an explicit backend is asked about.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .. import ops
from ..ops.patterns import Pattern, parse_pattern
from ..specs import check_direct_damp
from . import arguments
from .arguments import check_positive_int
from .damping import Damping, parse_damp
from .weight_update import UPDATES

__all__ = ["PrunerConfig", "FISHER_METHODS", "FISHER_STORAGES", "auto_fisher_method", "auto_fisher_storage",
           "check_positive_int"]

FISHER_METHODS = ("auto", "direct", "woodbury")
FISHER_STORAGES = ("auto", "dense", "packed")


def auto_fisher_method(device: torch.device) -> str:
    """The Fisher build that "auto" picks on ``device``, and why.

    CPU -> "direct": on 2 cores, d = 10^6, B = 50, m = 1024 it built F⁻¹ 18x faster than
    the naive per-gradient update with 6x less error (bench/results/cpu-fisher-build-*.txt),
    while the Woodbury form stays memory-bound there. Its limit: C = Σ g gᵀ/m is stored in
    float32, so its error grows with cond(λI + C); measured (2026-11-21, B = 50, m = 256)
    on gradients whose spectrum decays 2x per direction, error/naive was 0.36 at λ = 1e-7,
    2.5 at 1e-8 and 28 at 1e-9 (relative errors 1.6e-7, 1e-6, 1e-5), while on full-rank
    spectra it stayed below naive's down to λ = 1e-9. Pass fisher_method="woodbury" when λ
    sits far below most of the gradient spectrum.
    Other devices -> "woodbury" until their backends' benchmarks decide.
    """
    return "direct" if torch.device(device).type == "cpu" else "woodbury"


def auto_fisher_storage(device: torch.device, fisher_method: str, backend: str = "auto", block_size: int = 32) -> str:
    """The F storage that "auto" picks for the (resolved) build on ``device``, and why.

    "packed" where the direct build's accumulation and inversion read packed rows themselves
    (the cpp backend on a CPU): the same bits as dense storage (both are read by their upper
    triangles), about half of F's memory, and a faster prune step. On MiniLM's shapes (10.6M
    weights, B = 32, m = 256, damp auto, prune(0.8), 2 cores, AMD EPYC, 2026-12-08,
    bench/results/storage-cpu-2026-12-08.txt) the prune step took 3.08 s against 4.05 s dense
    (median of 3), the same masks and weights. The gradient phase is not faster: 1,024 MiniLM
    gradients added +8.9% and +10.8% packed, +8.5% dense (bench/results/cpu-pruner-amd25-2026-12-08*).
    "dense" everywhere else: the Woodbury build, backends that would get packed blocks tile by
    tile (slices with backups at every flush), other devices (not measured for this choice).
    """
    if torch.device(device).type != "cpu" or fisher_method != "direct":
        return "dense"
    rows = torch.zeros(1, ops.packed.packed_size(block_size), device=device)
    grads = torch.zeros(1, 1, block_size, device=device)
    try:
        native = [ops.dispatch.resolve_packed(op, backend, finv=rows, grads=grads)
                  for op in ("fisher_accumulate", "fisher_invert")]
    except ops.BackendNotSupported:
        return "dense"
    return "packed" if all(native) else "dense"


@dataclass(frozen=True)
class PrunerConfig:
    """The checked settings of one FisherPruner (see its docstring for each).

    fisher_method and fisher_storage are "auto" until ``resolved_for`` settles them for a device;
    chunk_size is k as the damping policy wants it (≤ num_grads). ``damping`` is the one
    mutable member: AutoDamp records the λ it chose there.
    """

    pattern: Pattern
    block_size: int
    num_grads: int
    chunk_size: int
    damping: Damping
    update: str
    fisher_method: str
    fisher_storage: str
    backend: str
    global_sparsity: bool
    verbose: bool
    max_memory_fraction: float
    max_tensor_sparsity: float | None = None  # global selection: no tensor pruned above it (None: no cap)

    @classmethod
    def from_args(cls, *, block_size, num_grads, damp, pattern, global_sparsity, update, backend, chunk_size,
                  fisher_method, fisher_storage, verbose, max_memory_fraction,
                  max_tensor_sparsity=None) -> "PrunerConfig":
        parsed_pattern = parse_pattern(pattern)
        block_size = check_positive_int("block_size", block_size)
        num_grads = check_positive_int("num_grads", num_grads)
        chunk_size = check_positive_int("chunk_size", chunk_size)
        global_sparsity = arguments.check_flag("global_sparsity", global_sparsity)
        # numbers through ops.checks.check_damp: bools refused, NumPy / 0-d tensors taken; "rel"/"auto"
        # follow the selection (one global λ under one global threshold, issue 12)
        damping = parse_damp(damp, global_sparsity=global_sparsity)
        parsed_pattern.check_block_size(block_size)
        arguments.check_choice("update", update, UPDATES)
        arguments.check_choice("fisher_method", fisher_method, FISHER_METHODS)
        arguments.check_choice("fisher_storage", fisher_storage, FISHER_STORAGES)
        if backend != "auto" and backend not in ops.BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {ops.BACKENDS}, got {backend!r}")
        verbose = arguments.check_flag("verbose", verbose)
        fraction = arguments.check_fraction("max_memory_fraction", max_memory_fraction, low_open=True, high_closed=True)
        cap = None if max_tensor_sparsity is None else arguments.check_fraction(
            "max_tensor_sparsity", max_tensor_sparsity, low_open=True, high_closed=True)
        _check_cap(cap, update, parsed_pattern)
        return cls(parsed_pattern, block_size, num_grads, damping.chunk_size_for(num_grads, min(chunk_size, num_grads)),
                   damping, update, fisher_method, fisher_storage, backend, global_sparsity, verbose, fraction, cap)

    def resolved_for(self, device: torch.device) -> "PrunerConfig":
        """This config with fisher_method and fisher_storage settled for tensors on ``device``;
        refuses damping policies the chosen build or storage cannot serve."""
        method = auto_fisher_method(device) if self.fisher_method == "auto" else self.fisher_method
        if self.damping.needs_direct:
            check_direct_damp(self.damp, self.fisher_method)
            method = "direct"
        storage = self.fisher_storage
        if storage == "auto":
            storage = auto_fisher_storage(device, method, self.backend, self.block_size)
        resolved = dataclasses.replace(self, fisher_method=method, fisher_storage=storage)
        resolved.check_backend_serves(torch.device(device))
        return resolved

    def check_backend_serves(self, device: torch.device) -> None:
        """An explicit backend must serve every op a prune step calls on ``device`` (asked of the
        dispatch with one float32 block there): refused now, with its reasons, not at the first flush."""
        if self.backend == "auto":
            return
        B = self.block_size
        finv = torch.eye(B, device=device).unsqueeze(0)
        weight, grads = torch.zeros(B, device=device), torch.zeros(1, 1, B, device=device)
        build = ("woodbury_update",) if self.fisher_method == "woodbury" else ("fisher_accumulate", "fisher_invert")
        calls = [(op, {"finv": finv, "grads": grads}) for op in build]
        if self.update == "sequential":
            calls.append(("sequential_order", {"finv": finv, "weight": weight, "pattern": self.pattern}))
        else:  # scoring without factors: the pruner asks for them only where the backend writes them
            calls.append(("obs_scores", {"finv": finv, "weight": weight, "pattern": self.pattern, "return_factors": False}))
        update = "joint" if self.update == "sequential" else self.update
        calls.append(("obs_update", {"finv": finv, "weight": weight, "pattern": self.pattern, "update": update}))
        failing = {op: ops.not_supported_reasons(op, self.backend, **call) for op, call in calls}
        failing = {op: reasons for op, reasons in failing.items() if reasons}
        if failing:
            reasons = [f"{op}: {'; '.join(r)}" for op, r in failing.items()]
            raise ops.BackendNotSupported(", ".join(failing), self.backend, reasons + [f"the tracked tensors are on {device}"])

    def check_sparsity(self, sparsity) -> float:
        """``sparsity`` as a float in [0, 1); for N:M, the pattern's N/M (None or any number in [0, 1) passed)."""
        return arguments.check_sparsity(sparsity, self.pattern)

    @property
    def damp(self):
        """The damp as the user would write it (a number, "rel:α", "auto", ...)."""
        return self.damping.spec

    @property
    def packed(self) -> bool:
        return self.fisher_storage == "packed"


def _check_cap(cap: float | None, update: str, pattern: Pattern) -> None:
    """max_tensor_sparsity (None or checked in (0, 1]) caps the global selection by scores: update
    "sequential" selects by each block's greedy order, N:M by groups: neither takes one."""
    if cap is not None and (update == "sequential" or pattern.is_nm):
        raise ValueError(f"max_tensor_sparsity caps the selection by scores: not with update='sequential' or an N:M "
                         f"pattern (got update={update!r}, pattern={pattern.name!r})")
