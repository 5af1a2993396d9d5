"""The public arguments' rules that need no torch: what counts as a number, the pattern
and damp specs, the backend names. One definition each, shared by ops/ (which re-exports
them), core/ and the command line, which checks its arguments with these before it imports
torch (issue 14: a refused ``prune`` took 1.1 s instead of 13.6 s on a loaded machine; the
measurement is in obert_kernels/__init__.py).

Nothing here imports torch: a tensor argument can only exist once torch is imported, so
``real_scalar`` looks torch up in ``sys.modules`` instead.
"""
from __future__ import annotations

import itertools
import math
import numbers
import sys
from dataclasses import dataclass

__all__ = ["ArgumentTypeError", "real_scalar", "check_damp", "BACKENDS", "Pattern", "parse_pattern", "DampSpec",
           "DAMP_PER_CHOICES", "PRUNE_END_FRACTION", "AUTO_CRITERIA", "check_cuda_driver", "AUTO_RULES", "check_relative_damp", "check_damp_per", "parse_damp_spec", "check_direct_damp"]

BACKENDS = ("torch", "triton", "cuda", "cpp")
# what a relative λ is relative to: the mean Fisher diagonal of each tensor, each block, or of
# all tracked weights ("global": one λ for every tensor, what "rel:α"/"auto" mean under one
# global threshold, issue 12)
DAMP_PER_CHOICES = ("tensor", "block", "global")
# gradual pruning's last pruning step as a fraction of the steps (recipes/gradual_training, prune
# --gradual --prune-end; was 3/4). Measured 2026-11-30 (README, "Gradual pruning with distillation"):
# MiniLM at 90%, 400 steps: mean cosine +0.007 for 1/2 over 3/4, +0.0012 for 2/5 over 1/2 (less than
# the 0.0016 by which two runs of one gradual setting differed); the digits MLP, 1000 steps, seeds
# 3-5, gradual oBERT at 95/97/98%: 96.0/94.4/92.3% at 2/5 against 95.8/93.7/92.1% at 3/4 (runs of
# one setting differ by ~1 point). Earlier than 3/4 is the measured gain; 2/5 rather than 1/2 is not resolved.
PRUNE_END_FRACTION = 0.4
# damp="auto"'s criterion and rule (core/damping.AutoDamp)
AUTO_CRITERIA = ("full", "block", "likelihood")
AUTO_RULES = ("min", "1se", "1se1d")


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a bool or a string where a number goes, ...).

    Both a TypeError and a ValueError: code that caught the ValueError these checks raised
    before they told the two apart keeps working."""


def real_scalar(name: str, value, what: str = "a number"):
    """``value`` as a Python int (integer types) or float; ArgumentTypeError unless it is a
    real number: an int, a float, a NumPy scalar or 0-d array, a 0-d tensor. Bools of every
    kind are refused (True is not 1 here); NaN and ±inf are returned for the caller's range check."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    is_tensor = torch is not None and isinstance(value, torch.Tensor)
    if is_tensor or (getattr(value, "shape", None) == () and hasattr(value, "item")):
        refused = () if torch is None else (torch.bool, torch.complex64, torch.complex128)
        if value.shape != () or getattr(value, "dtype", None) in refused:
            raise ArgumentTypeError(f"{name} must be {what}, got a tensor of shape {tuple(value.shape)} and {value.dtype}")
        value = value.item()  # a 0-d tensor or array, or a NumPy scalar (np.bool_ becomes a bool: refused below)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_damp(damp: float) -> float:
    """λ as a finite float > 0 (NumPy / 0-d tensor numbers accepted; bools refused)."""
    value = real_scalar("damp", damp, "a finite number > 0")
    if not (0 < value < float("inf")):
        raise ValueError(f"damp must be a finite number > 0, got {damp!r}")
    return float(value)


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern.

    kind: "unstructured" | "block" | "nm"
    group_size: weights per aligned group (1, 4, or M)
    n_prune: for "nm", how many weights of each group are pruned (N); else 0
    """

    kind: str
    group_size: int
    n_prune: int = 0

    @property
    def name(self) -> str:
        if self.kind == "unstructured":
            return "unstructured"
        if self.kind == "block":
            return f"block{self.group_size}"
        return f"{self.n_prune}:{self.group_size}"

    @property
    def is_nm(self) -> bool:
        return self.kind == "nm"

    def __post_init__(self):
        # computed once here rather than by functools.cached_property, whose lock (Python < 3.12)
        # torch.compile cannot trace: a compiled step may read pattern.subsets
        subsets = tuple(itertools.combinations(range(self.group_size), self.n_prune)) if self.kind == "nm" else None
        object.__setattr__(self, "_subsets", subsets)

    @property
    def subsets(self) -> tuple[tuple[int, ...], ...]:
        """For N:M, every N-subset of range(M) in itertools.combinations order."""
        if self._subsets is None:
            raise AttributeError(f"pattern {self.name} has no subsets")
        return self._subsets

    def check_block_size(self, block_size: int) -> None:
        """Raise ValueError unless Fisher blocks hold whole groups (SPEC §2b)."""
        if block_size % self.group_size:
            raise ValueError(
                f"block_size={block_size} does not fit pattern {self.name!r}: "
                f"it must be divisible by the group size {self.group_size}"
            )

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.name


def parse_pattern(pattern: "str | Pattern") -> Pattern:
    """Parse "unstructured", "block4" or "N:M" (0 < N < M) into a Pattern."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
    text = pattern.strip().lower()
    if text == "unstructured":
        return Pattern("unstructured", 1)
    if text == "block4":
        return Pattern("block", 4)
    if ":" in text:
        left, _, right = text.partition(":")
        if left.isdigit() and right.isdigit():
            n, m = int(left), int(right)
            if 0 < n < m:
                return Pattern("nm", m, n)
    raise ValueError(
        f"unknown pattern {pattern!r}: use 'unstructured', 'block4' or 'N:M' with 0 < N < M (e.g. '2:4')"
    )


def check_relative_damp(fraction) -> float:
    """α of a relative damp as a finite float > 0 (a Python int or float; bools refused)."""
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < math.inf):
        raise ValueError(f"a relative damp must be a finite number > 0, got {fraction!r}")
    return float(fraction)


def check_damp_per(per) -> str:
    if per not in DAMP_PER_CHOICES:
        raise ValueError(f"per must be one of {DAMP_PER_CHOICES}, got {per!r}")
    return per


@dataclass(frozen=True)
class DampSpec:
    """A damp as parsed and checked: kind "absolute" (value = λ), "relative" (value = α) or
    "auto" (value None); per "tensor" | "block" | "global", or None where the text left it out
    (it then follows the selection: ``core.damping.parse_damp``); auto's criterion and rule."""

    kind: str
    value: float | None = None
    per: str | None = None
    criterion: str = "full"
    rule: str = "1se"


DAMP_FORMS = "a number > 0, 'rel:α[:tensor|block|global]' or 'auto[:tensor|block|global[:full|block|likelihood[:min|1se]]]'"


def parse_damp_spec(damp) -> DampSpec:
    """FisherPruner's ``damp=`` as text or number: a number (absolute λ), "rel:α[:per]",
    "auto[:per[:criterion[:rule]]]". A string that is none of these is refused with one
    message naming them."""
    if not isinstance(damp, str):
        return DampSpec("absolute", check_damp(damp))
    parts = damp.strip().lower().split(":")
    per = parts[2] if parts[0] == "rel" and len(parts) == 3 else parts[1] if parts[0] == "auto" and len(parts) >= 2 else None
    if parts[0] == "auto" and len(parts) <= 4:
        criterion, rule = (parts[2] if len(parts) >= 3 else "full"), (parts[3] if len(parts) == 4 else "1se")
        if criterion not in AUTO_CRITERIA or rule not in AUTO_RULES:
            raise ValueError(f"damp must be {DAMP_FORMS}; got {damp!r}")
        return DampSpec("auto", None, None if per is None else check_damp_per(per), criterion, rule)
    if parts[0] == "rel" and len(parts) in (2, 3):
        try:
            fraction = float(parts[1])
        except ValueError:
            fraction = None
        if fraction is not None:
            return DampSpec("relative", check_relative_damp(fraction), None if per is None else check_damp_per(per))
    try:
        return DampSpec("absolute", check_damp(float(damp.strip().lower())))
    except ValueError:
        raise ValueError(f"damp must be {DAMP_FORMS}; got {damp!r}") from None


def check_cuda_driver(name: str, device) -> None:
    """Before torch's start-up (seconds): a CUDA ``device`` where no GPU driver shows itself
    (/proc/driver/nvidia, a loadable libcuda) is refused with the message the torch check
    (``core.arguments.check_device``) gives. Where a driver shows, torch decides later."""
    if not isinstance(device, str) or not device.strip().lower().startswith("cuda"):
        return
    import ctypes
    import os

    if os.path.exists("/proc/driver/nvidia"):
        return
    for lib in ("libcuda.so.1", "nvcuda.dll"):
        try:
            ctypes.CDLL(lib)
            return
        except OSError:
            pass
    raise ValueError(f"{name} {device!r}: no CUDA device here (no GPU driver: no /proc/driver/nvidia, no libcuda)")


def check_direct_damp(damp, fisher_method: str) -> None:
    """A damp that needs F itself (``auto``: it fits on held-out gradients) refused on the
    Woodbury build, where F₀⁻¹ = I/λ fixes λ before the first gradient."""
    if fisher_method == "woodbury":
        raise ValueError(f"damp={damp!r} needs the Fisher itself (fisher_method='direct'); on the Woodbury "
                         "path F₀⁻¹ = I/λ fixes λ before the first gradient: pass a relative damp 'rel:α' instead")
