"""Checks of the public arguments, one wording everywhere: each returns the value as used.

FisherPruner (through ``config.PrunerConfig``), ``one_shot_prune``, ``magnitude_prune``,
``GradualSchedule``, ``GaussNewtonProbe`` and the command line's options call these
before any work starts, so a bad argument is refused with its name and the accepted
range, and nothing has been allocated or changed.

Numbers follow ``specs.real_scalar`` (also ``ops.checks.real_scalar``): ints, floats, NumPy
scalars and 0-d tensors are numbers; bools are not (``damp=True`` is refused, not read as
λ = 1). A wrong type raises ``ArgumentTypeError`` (both a TypeError and a ValueError); a
number out of its range (NaN included) raises ValueError.

Importing this module does not import torch (only ``check_device`` does, when called): the
command line checks its flags with these before torch's start-up.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable

from ..specs import ArgumentTypeError, Pattern, parse_pattern, real_scalar

__all__ = ["ArgumentTypeError", "as_number", "as_int", "check_positive_int", "check_nonnegative_int", "check_fraction",
           "check_sparsity", "check_choice", "check_flag", "check_callable", "check_device", "check_cubic_schedule",
           "check_one_shot_args"]


def as_number(name: str, value) -> float:
    """``value`` as a float (NaN and ±inf pass: the range checks refuse them)."""
    return float(real_scalar(name, value))


def as_int(name: str, value) -> int:
    """``value`` as a Python int: an integer type (NumPy / 0-d integer tensors too), not 2.0 or True."""
    number = real_scalar(name, value, "an int")
    if not isinstance(number, int):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r}")
    return number


def check_positive_int(name: str, value) -> int:
    number = real_scalar(name, value, "a positive int")
    if not isinstance(number, int) or number <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


def check_nonnegative_int(name: str, value) -> int:
    number = real_scalar(name, value, "an int ≥ 0")
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"{name} must be an int ≥ 0, got {value!r}")
    return number


def check_fraction(name: str, value, *, low_open: bool = False, high_closed: bool = False) -> float:
    """``value`` as a float in [0, 1) (the default), (0, 1] (low_open, high_closed), ...; NaN refused."""
    number = float(real_scalar(name, value))
    low_ok = number > 0.0 if low_open else number >= 0.0
    high_ok = number <= 1.0 if high_closed else number < 1.0
    if not (low_ok and high_ok):  # NaN fails both
        interval = ("(0" if low_open else "[0") + (", 1]" if high_closed else ", 1)")
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def check_sparsity(sparsity, pattern: "str | Pattern" = "unstructured", name: str = "sparsity") -> float:
    """The target as a float in [0, 1); for N:M the pattern's N/M (``sparsity`` may then be
    None, and a number given must still be in [0, 1): N:M ignores it, it does not excuse it)."""
    pattern = parse_pattern(pattern)
    if pattern.is_nm:
        if sparsity is not None:
            check_fraction(name, sparsity)
        return pattern.n_prune / pattern.group_size
    if sparsity is None:
        raise ValueError(f"{name} must be a number in [0, 1), got None")
    return check_fraction(name, sparsity)


def check_choice(name: str, value, choices: tuple) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_flag(name: str, value) -> bool:
    """A bool (Python, NumPy or 0-d bool tensor); 0, 1, "no", None are refused: they read as a choice made by accident."""
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    if torch is not None and isinstance(value, torch.Tensor) and value.shape == () and value.dtype == torch.bool:
        return bool(value)
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")):
        return bool(value)  # NumPy's bool (np.bool_; np.bool in NumPy 2), without importing NumPy
    raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def check_callable(name: str, value, signature: str = "") -> None:
    if not callable(value):
        raise ArgumentTypeError(f"{name} must be callable{(' as ' + signature) if signature else ''}, "
                                f"got {type(value).__name__}")


def check_device(name: str, device) -> torch.device:
    """``device`` parsed and present here: a CUDA device needs torch.cuda and that index."""
    import torch  # here, not at the top: the command line's other checks run before torch's start-up

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:  # a malformed name or a wrong type
        raise ValueError(f"{name} {device!r} is not a device: {exc}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device!r}: no CUDA device here (torch.cuda.is_available() is False)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type not in ("cpu", "meta") and not _backend_available(parsed.type):
        raise ValueError(f"{name} {device!r}: no {parsed.type} device here")
    return parsed


def _backend_available(device_type: str) -> bool:
    import torch

    module = getattr(torch, device_type, None)
    available = getattr(module, "is_available", None)
    return bool(available()) if callable(available) else False


def check_cubic_schedule(init_sparsity, final_sparsity, start_step, end_step, update_every):
    """GradualSchedule's numbers, checked and converted: sparsities in [0, 1) with
    init ≤ final (pruned weights stay pruned: a falling target would prune nothing),
    0 ≤ start_step ≤ end_step, update_every ≥ 1. Returns them in that order."""
    init = check_fraction("init_sparsity", init_sparsity)
    final = check_fraction("final_sparsity", final_sparsity)
    if init > final:
        raise ValueError(f"init_sparsity ({init}) must be ≤ final_sparsity ({final}): pruned weights stay pruned")
    start, end = as_int("start_step", start_step), as_int("end_step", end_step)
    if not 0 <= start <= end:
        raise ValueError(f"need 0 <= start_step <= end_step, got {start_step}, {end_step}")
    every = real_scalar("update_every", update_every, "an int ≥ 1")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every!r}")
    return init, final, start, end, every



def check_one_shot_args(loss_fn, batches, sparsity, num_recomputations, progress) -> None:
    """one_shot_prune's own arguments, before a pruner is built (the pruner checks the
    sparsity again against its pattern; None is for N:M, whose sparsity is the pattern's)."""
    check_callable("loss_fn", loss_fn, "loss_fn(model, batch) -> scalar tensor")
    if not isinstance(batches, Iterable) and not hasattr(batches, "__getitem__"):
        raise ArgumentTypeError(f"batches must be an iterable of batches, got {type(batches).__name__}")
    if sparsity is not None:
        check_fraction("sparsity", sparsity)
    check_positive_int("num_recomputations", num_recomputations)
    check_flag("progress", progress)
