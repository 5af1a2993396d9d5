"""Fisher-inverse build on the torch backend vs the naive per-gradient update, one run.

Builds F⁻¹ for d weights in blocks of B from m gradients three ways, on the same
gradients, and prints time, rate and error against the float64 oracle (explicit F,
inverted in float64, on a random sample of blocks: blocks are independent, so the
sample measures every method's error the same way):

  naive     the reference implementation's update: one einsum + one baddbmm per gradient
  woodbury  ops.woodbury_update, chunks of k gradients as rank-k batched corrections
  direct    ops.fisher_accumulate (batched GEMM over chunks) + ops.fisher_invert (Cholesky)

Flop counts follow SPEC §5 (4·d·B per gradient for the Woodbury update; the direct path
does about half that, and is credited with the same useful work); bytes for the naive
update are 3·4·d·B per gradient.

    python bench/bench_woodbury_cpu.py                  # d = 10^6, B = 50, m = 1024 (minutes)
    python bench/bench_woodbury_cpu.py --d 100000 --num-grads 256   # a quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels import ops  # noqa: E402

# read (not imported) by `python -m obert_kernels bench`: what it needs, and a short run's arguments
REQUIRES = ("cpu",)
QUICK_ARGS = ["--d", "100000", "--num-grads", "256"]


def make_chunk(index: int, k: int, d: int, col_scale: torch.Tensor, seed: int) -> torch.Tensor:
    """Gradient chunk `index` (k, d) float32, reproducible from the seed alone.

    Per-coordinate log-normal scales and a shared low-rank part make the Fisher blocks
    anisotropic and correlated, as real gradients are, rather than ≈ I.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    noise = torch.randn(k, d, generator=gen)
    shared = torch.randn(k, 4, generator=gen) @ torch.randn(4, d, generator=gen)
    return (noise + 0.5 * shared) * col_scale * 1e-3


def to_block_major(chunk: torch.Tensor, B: int) -> torch.Tensor:
    """(k, d) -> (ceil(d/B), k, B), zero-padded: the layout FisherPruner buffers in."""
    k, d = chunk.shape
    nb = -(-d // B)
    padded = torch.nn.functional.pad(chunk, (0, nb * B - d))
    return padded.view(k, nb, B).permute(1, 0, 2).contiguous()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--num-grads", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=32, help="gradients per call (k)")
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--ref-blocks", type=int, default=256, help="blocks checked against float64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="naive,woodbury,direct")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    d, B, m, k = args.d, args.block_size, args.num_grads, args.chunk
    nb = -(-d // B)
    col_scale = torch.exp(torch.randn(d, generator=torch.Generator().manual_seed(args.seed)))
    ref_idx = torch.randperm(nb, generator=torch.Generator().manual_seed(args.seed + 1))[: args.ref_blocks].sort().values
    # every method reads the same gradients, generated before any clock starts, in the
    # block-major layout the pruner's buffer uses (m·d floats: 4 GB at the defaults)
    chunks = [to_block_major(make_chunk(i, min(k, m - s), d, col_scale, args.seed), B) for i, s in enumerate(range(0, m, k))]
    sample = torch.cat([c[ref_idx] for c in chunks], dim=1)  # (ref_blocks, m, B)
    ref = ops.fisher_inverse_ref(sample.permute(1, 0, 2).reshape(m, -1), B, args.damp, num_grads=m)

    def build(method):
        if method == "direct":
            fisher = torch.zeros(nb, B, B)
            seconds = timed(lambda: [ops.fisher_accumulate(fisher, c, m, backend="torch") for c in chunks])
            return fisher, seconds + timed(lambda: ops.fisher_invert(fisher, args.damp, backend="torch"))
        finv = ops.init_finv(nb, B, args.damp)
        if method == "naive":
            return finv, timed(lambda: [ops.naive_woodbury_update(finv, c, m) for c in chunks])
        return finv, timed(lambda: [ops.woodbury_update(finv, c, m, backend="torch") for c in chunks])

    flops = 4.0 * d * B * m
    rows = []
    for method in args.methods.split(","):
        finv, seconds = build(method)
        err = ((finv[ref_idx].double() - ref).norm() / ref.norm()).item()
        rows.append({"method": method, "seconds": seconds, "ms_per_grad": 1e3 * seconds / m,
                     "gflops": flops / seconds / 1e9, "rel_err": err})
        if method == "naive":
            rows[-1]["gbps"] = 3 * 4.0 * d * B * m / seconds / 1e9
        del finv
    naive = next((r for r in rows if r["method"] == "naive"), None)
    print(f"d={d:,} B={B} m={m} k={k} damp={args.damp:g}  torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, {date.today()}")
    print(f"{'method':<10}{'total s':>10}{'ms/grad':>10}{'GFLOP/s':>10}{'GB/s':>8}{'rel err':>11}{'vs naive':>10}")
    for r in rows:
        ratio = f"{naive['seconds'] / r['seconds']:.1f}x" if naive else "-"
        gbps = f"{r['gbps']:.1f}" if "gbps" in r else "-"
        print(f"{r['method']:<10}{r['seconds']:>10.2f}{r['ms_per_grad']:>10.2f}{r['gflops']:>10.1f}{gbps:>8}{r['rel_err']:>11.2e}{ratio:>10}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k_: v for k_, v in vars(args).items() if k_ != "json"},
                                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "date": str(date.today()), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
