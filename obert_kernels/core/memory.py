"""Memory of the Fisher state (SPEC §3): estimate it, say it, refuse what will not fit."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["MemoryEstimate", "FisherMemoryError", "estimate_memory", "available_memory", "format_bytes", "refuse_if_too_big"]


class FisherMemoryError(MemoryError):
    """The Fisher state would not fit on its device; nothing was allocated."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` now (CUDA: mem_get_info; CPU: MemAvailable), None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the Fisher state needs: F⁻¹ blocks plus the k-gradient buffer (float32)."""

    num_weights: int
    num_blocks: int
    block_size: int
    chunk_size: int
    fisher_bytes: int
    buffer_bytes: int
    device: str
    available_bytes: int | None
    packed: bool = False

    @property
    def total_bytes(self) -> int:
        return self.fisher_bytes + self.buffer_bytes

    def fits(self, fraction: float) -> bool:
        return self.available_bytes is None or self.total_bytes <= fraction * self.available_bytes

    def __str__(self) -> str:
        avail = "unknown" if self.available_bytes is None else format_bytes(self.available_bytes)
        return (
            f"Fisher state for {self.num_weights:,} weights in {self.num_blocks:,} blocks of {self.block_size}: "
            f"F⁻¹ {format_bytes(self.fisher_bytes)}{' (packed)' if self.packed else ''} + {self.chunk_size}-gradient buffer "
            f"{format_bytes(self.buffer_bytes)} = {format_bytes(self.total_bytes)} on {self.device} "
            f"(available {avail})"
        )


def estimate_memory(num_weights_per_tensor, block_size: int, chunk_size: int, device="cpu", itemsize: int = 4,
                    packed: bool = False) -> MemoryEstimate:
    """Estimate for tensors of the given sizes, each cut into its own blocks of B (SPEC §3);
    packed: F⁻¹ as upper triangles, B(B+1)/2 floats per block instead of B²."""
    sizes = [int(n) for n in num_weights_per_tensor]
    num_blocks = sum(-(-n // block_size) for n in sizes)
    device = torch.device(device)
    return MemoryEstimate(
        num_weights=sum(sizes),
        num_blocks=num_blocks,
        block_size=block_size,
        chunk_size=chunk_size,
        fisher_bytes=num_blocks * (block_size * (block_size + 1) // 2 if packed else block_size * block_size) * itemsize,
        buffer_bytes=chunk_size * num_blocks * block_size * itemsize,
        device=str(device),
        available_bytes=available_memory(device),
        packed=packed,
    )


def refuse_if_too_big(est: MemoryEstimate, max_fraction: float) -> None:
    """Raise FisherMemoryError when ``est`` needs more than ``max_fraction`` of the free memory."""
    if not est.fits(max_fraction):
        raise FisherMemoryError(
            f"{est}; that is more than {max_fraction:.0%} of the free memory. "
            "Lower block_size or chunk_size, prune fewer tensors, or use a device with more memory."
        )
