"""The finiteness check of one gradient sample: a sum per tensor against one multi-tensor max-|g|.

    python bench/bench_grad_check.py                  # on a GPU if there is one, else the CPU
    python bench/bench_grad_check.py --device cpu

What ``add_grads`` checks before it copies a gradient (``core.grad_buffer.check_all_finite``),
for all-MiniLM-L6-v2's 36 encoder Linear weights (10.6M float32): the per-tensor way (a float32
sum per tensor, cast to float64, stacked, one ``isfinite(...).all()`` and one synchronization:
~3 launches a tensor) against ``all_finite_quick`` (off the CPU: ``get_total_norm`` with the
∞-norm, a multi-tensor kernel, then one synchronization). Median of --repeats (CUDA events
around the call and its synchronization on a GPU, the host clock on the CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MINILM_SHAPES = ([(384, 384)] * 4 + [(1536, 384), (384, 1536)]) * 6


def per_tensor_sums(grads) -> bool:
    """The check as it was (2026-11-30): one float32 sum per tensor, stacked as float64."""
    import torch

    totals = torch.stack([torch.sum(g, dtype=torch.float32).to(torch.float64) for g in grads])
    return bool(torch.isfinite(totals).all())


def median_ms(fn, device: str, repeats: int) -> float:
    import torch

    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)

    import torch

    from obert_kernels.core.grad_buffer import all_finite_quick

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(*s, generator=gen).to(device) for s in MINILM_SHAPES]
    assert per_tensor_sums(grads) and all_finite_quick(grads)
    ways = {"per-tensor sums": lambda: per_tensor_sums(grads), "all_finite_quick": lambda: all_finite_quick(grads)}
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"gradient check, MiniLM's 36 tensors (10,616,832 float32), {name}, torch {torch.__version__}, "
          f"median of {args.repeats}")
    for label, fn in ways.items():
        print(f"  {label}: {median_ms(fn, device, args.repeats):.3f} ms")


if __name__ == "__main__":
    main()
