"""Time and peak memory of each step of a prune, as a user sees them.

CPU: torch allocates outside Python's allocator, so tracemalloc sees nothing; the
process's resident set is what counts. On Linux, writing "5" to /proc/self/clear_refs
resets the peak resident set (VmHWM), so each step gets its own peak; elsewhere the
lifetime peak (``resource.getrusage``) is reported and marked as such.
CUDA: ``torch.cuda`` peak allocated bytes, reset per step.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .memory import format_bytes

__all__ = ["StepMeter", "StepRecord", "current_rss", "peak_rss", "reset_peak_rss"]


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def current_rss() -> int | None:
    """Resident bytes of this process now (Linux), None elsewhere."""
    return _status_kib("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux ≥ 4.0); False if this system cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident bytes since the last reset (Linux), else over the process's lifetime."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


@dataclass
class StepRecord:
    name: str
    seconds: float
    peak_bytes: int
    what: str  # "peak RSS", "lifetime peak RSS" or "peak CUDA allocated"

    def __str__(self) -> str:
        return f"{self.name}: {self.seconds:.2f} s, {self.what} {format_bytes(self.peak_bytes)}"


@dataclass
class StepMeter:
    """``with meter.step("gradients"): ...`` records each step's wall time and peak memory."""

    device: str = "cpu"
    records: list[StepRecord] = field(default_factory=list)
    baseline_bytes: int | None = None  # memory in use before the first step (RSS, or CUDA allocated)

    def mark_baseline(self) -> None:
        """Record what is in use now, so peaks can be read as baseline + what the steps added."""
        cuda = torch.device(self.device).type == "cuda"
        self.baseline_bytes = torch.cuda.memory_allocated(self.device) if cuda else current_rss()

    @contextmanager
    def step(self, name: str):
        cuda = torch.device(self.device).type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            what = "peak CUDA allocated"
        else:
            what = "peak RSS" if reset_peak_rss() else "lifetime peak RSS"
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(self.device) if cuda else peak_rss()
            self.records.append(StepRecord(name, seconds, int(peak), what))

    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    def max_peak(self) -> int:
        return max((r.peak_bytes for r in self.records), default=0)
