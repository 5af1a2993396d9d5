"""FisherPruner's constructor arguments, checked once, as a frozen ``PrunerConfig``.

``PrunerConfig.from_args`` checks the arguments that need no tensor (in the order
FisherPruner always checked them, so the first error reported is the same);
``resolved_for`` then settles what depends on the tracked tensors' device (the Fisher
build "auto" picks, the damping's needs). Nothing here allocates.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .. import ops
from ..ops.patterns import Pattern, parse_pattern
from .damping import AbsoluteDamp, Damping, parse_damp
from .weight_update import UPDATES

__all__ = ["PrunerConfig", "FISHER_METHODS", "FISHER_STORAGES", "auto_fisher_method", "check_positive_int"]

FISHER_METHODS = ("auto", "direct", "woodbury")
FISHER_STORAGES = ("dense", "packed")


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


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class PrunerConfig:
    """The checked settings of one FisherPruner (see its docstring for each).

    fisher_method is "auto" until ``resolved_for`` names the build for a device;
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
        check_positive_int("block_size", block_size)
        check_positive_int("num_grads", num_grads)
        check_positive_int("chunk_size", chunk_size)
        damping = parse_damp(damp, global_sparsity=bool(global_sparsity))
        parsed_pattern.check_block_size(block_size)
        _check_choice("update", update, UPDATES)
        _check_choice("fisher_method", fisher_method, FISHER_METHODS)
        _check_choice("fisher_storage", fisher_storage, FISHER_STORAGES)
        if backend != "auto" and backend not in ops.BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {ops.BACKENDS}, got {backend!r}")
        _check_cap(max_tensor_sparsity, update, parsed_pattern)
        return cls(parsed_pattern, block_size, num_grads, damping.chunk_size_for(num_grads, min(chunk_size, num_grads)),
                   damping, update, fisher_method, fisher_storage, backend, bool(global_sparsity), verbose,
                   max_memory_fraction, None if max_tensor_sparsity is None else float(max_tensor_sparsity))

    def resolved_for(self, device: torch.device) -> "PrunerConfig":
        """This config with fisher_method settled for tensors on ``device``; refuses damping
        policies the chosen build or storage cannot serve."""
        method = auto_fisher_method(device) if self.fisher_method == "auto" else self.fisher_method
        if self.damping.needs_direct:
            if self.fisher_method == "woodbury":
                raise ValueError(f"damp={self.damp!r} needs the Fisher itself (fisher_method='direct'); on the Woodbury "
                                 "path F₀⁻¹ = I/λ fixes λ before the first gradient: pass a relative damp 'rel:α' instead")
            method = "direct"
        if self.fisher_storage == "packed" and not isinstance(self.damping, AbsoluteDamp):
            raise ValueError(f"damp={self.damp!r} is relative to the Fisher diagonal, which packed storage does not "
                             "keep per tensor here: pass an absolute damp (a number) with fisher_storage='packed'")
        return dataclasses.replace(self, fisher_method=method)

    def check_sparsity(self, sparsity) -> float:
        """``sparsity`` as a float in [0, 1); for N:M, the pattern's N/M whatever is passed."""
        if self.pattern.is_nm:
            return self.pattern.n_prune / self.pattern.group_size
        if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        return float(sparsity)

    @property
    def damp(self):
        """The damp as the user would write it (a number, "rel:α", "auto", ...)."""
        return self.damping.spec

    @property
    def packed(self) -> bool:
        return self.fisher_storage == "packed"


def _check_cap(cap, update: str, pattern: Pattern) -> None:
    """max_tensor_sparsity: None or a number in (0, 1]; a cap of the global selection by scores
    (update "sequential" selects by each block's greedy order, N:M by groups: neither takes one)."""
    if cap is None:
        return
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0.0 < cap <= 1.0:
        raise ValueError(f"max_tensor_sparsity must be None or a number in (0, 1], got {cap!r}")
    if update == "sequential" or pattern.is_nm:
        raise ValueError(f"max_tensor_sparsity caps the selection by scores: not with update='sequential' or an N:M "
                         f"pattern (got update={update!r}, pattern={pattern.name!r})")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
