"""Global selection at MiniLM size: the ways to pick the count lowest of 10.6M scores.

    python bench/bench_selection.py                 # on a GPU if there is one, else the CPU
    python bench/bench_selection.py --device cpu --n 1000000

Median of --repeats (device events on a GPU, host clock on the CPU) for: a stable argsort,
kthvalue, ``selection.select_lowest`` (which picks one of the two by device), and, on a GPU,
the host argsort the pruner used before 2026-11-30. Measured that day: H200 argsort 0.58 ms,
kthvalue 66.7 ms, select_lowest 0.68 ms, host argsort 1634 ms; our CPU argsort 1.95 s,
kthvalue 0.31 s. Results: bench/results/gpu-h200-2026-11-30-run4/selbench.txt.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fn, device: str, repeats: int) -> float:
    import torch

    fn()  # warm-up
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
    import torch

    from obert_kernels.core import selection

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=10_616_832, help="scores (MiniLM's encoder Linear weights)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    scores = torch.rand(args.n, device=args.device, generator=torch.Generator(args.device).manual_seed(0))
    count, reps = args.n // 2, args.repeats if args.device == "cuda" else max(1, args.repeats // 5)
    ways = {"argsort(stable)": lambda: torch.argsort(scores, stable=True),
            "kthvalue": lambda: torch.kthvalue(scores, count),
            "select_lowest": lambda: selection.select_lowest(scores, count)}
    if args.device != "cpu":
        ways["host argsort"] = lambda: torch.argsort(scores.cpu(), stable=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    cells = [f"{k} {median_ms(f, args.device, reps if k != 'host argsort' else 3):.3f} ms" for k, f in ways.items()]
    print(f"selection of {count:,} of {args.n:,} on {name}: " + ", ".join(cells) + " (median)")


if __name__ == "__main__":
    main()
