"""The finiteness check of one gradient sample (a sum per tensor against one multi-tensor max-|g|),
and whole ``add_grads`` calls with and without the one-pass copy.

    python bench/bench_grad_check.py                  # on a GPU if there is one, else the CPU
    python bench/bench_grad_check.py --device cpu

What ``add_grads`` checks before it copies a gradient (``core.grad_buffer.check_all_finite``),
for all-MiniLM-L6-v2's 36 encoder Linear weights (10.6M float32): the per-tensor way (a float32
sum per tensor, cast to float64, stacked, one ``isfinite(...).all()`` and one synchronization:
~3 launches a tensor) against ``all_finite_quick`` (off the CPU: ``get_total_norm`` with the
∞-norm, a multi-tensor kernel, then one synchronization). Median of --repeats (CUDA events
around the call and its synchronization on a GPU, the host clock on the CPU). ``--add-grads N``
also times whole ``add_grads`` calls with either check (see ``add_grads_per_call``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_prune_gpu import minilm_shapes  # noqa: E402
from bench.bench_pruner_cpu import one_pass_copies  # noqa: E402  (the pruner's one-pass copy allowed, or never)
from bench.bench_selection import median_ms  # noqa: E402  (CUDA events on a GPU, the host clock on the CPU)



def per_tensor_sums(grads) -> bool:
    """The check as it was (2026-11-30): one float32 sum per tensor, stacked as float64."""
    import torch

    totals = torch.stack([torch.sum(g, dtype=torch.float32).to(torch.float64) for g in grads])
    return bool(torch.isfinite(totals).all())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--add-grads", type=int, default=0, metavar="N",
                    help="also time N add_grads calls each way (a FisherPruner on the same tensors)")
    args = ap.parse_args(argv)

    import torch

    from obert_kernels.core.grad_buffer import all_finite_quick

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(*s, generator=gen).to(device) for _, s in minilm_shapes()]
    assert per_tensor_sums(grads) and all_finite_quick(grads)
    ways = {"per-tensor sums": lambda: per_tensor_sums(grads), "all_finite_quick": lambda: all_finite_quick(grads)}
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"gradient check, MiniLM's 36 tensors (10,616,832 float32), {name}, torch {torch.__version__}, "
          f"median of {args.repeats}")
    for label, fn in ways.items():
        print(f"  {label}: {median_ms(fn, device, args.repeats):.3f} ms")
    if args.add_grads:
        add_grads_per_call(grads, device, args.add_grads)


def add_grads_per_call(grads, device: str, calls: int) -> None:
    """``FisherPruner.add_grads`` on the same 36 gradients (B = 50, m = 256, k = 32, the pruner's
    defaults otherwise) three ways: the per-tensor path with the per-tensor sums (as on
    2026-11-30), the per-tensor path with ``all_finite_quick``, and the one-pass ``ops.copy_rows``
    (where it serves: on CUDA always, on the CPU with backend auto or cpp). Alternating in
    rounds of 8 calls; per-call median over ``calls`` calls each, the flushes (every 32nd call)
    included, wall clock between synchronizations."""
    import torch

    from obert_kernels import FisherPruner
    from obert_kernels.core import grad_buffer

    quick = grad_buffer.all_finite_quick
    ways = {"per-tensor copies, per-tensor sums": (per_tensor_sums, False),
            "per-tensor copies, all_finite_quick": (quick, False),
            "one pass (ops.copy_rows) where it serves": (quick, True)}
    params = {f"w{i}": torch.nn.Parameter(g.clone()) for i, g in enumerate(grads)}
    pruners = {w: FisherPruner(params, block_size=50, num_grads=256, damp=1e-7, verbose=False) for w in ways}
    sample = {f"w{i}": g for i, g in enumerate(grads)}
    times = {w: [] for w in ways}
    try:
        for r in range(-1, calls // 8):
            for way, (check, allowed) in ways.items():
                grad_buffer.all_finite_quick = check
                for _ in range(8):
                    if pruners[way].num_collected == 256:
                        pruners[way].reset()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    with one_pass_copies(allowed):
                        t = time.perf_counter()
                        pruners[way].add_grads(sample)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        if r >= 0:  # round -1 warms up (allocations, the first flush's kernels)
                            times[way].append(1e3 * (time.perf_counter() - t))
    finally:
        grad_buffer.all_finite_quick = quick
    for way, ms in times.items():
        print(f"  add_grads, {way}: median {statistics.median(ms):.3f} ms a call, mean {statistics.mean(ms):.3f} "
              f"({len(ms)} calls)")


if __name__ == "__main__":
    main()
