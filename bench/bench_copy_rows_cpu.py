"""The gradient buffer's copy on the CPU: torch's per-tensor path against the C++ one pass.

    python bench/bench_copy_rows_cpu.py                    # MiniLM's 36 tensors and d = 10^6, masks and not
    python bench/bench_copy_rows_cpu.py --repeats 50       # quicker

What ``GradBuffer.add`` does with one gradient, without the pruner around it: the per-tensor
path (``check_all_finite``'s sums, then ``write_row`` per tensor: a strided copy, with a
keep-mask ``addcmul``) against ``ops.copy_rows`` (one C++ pass that copies, masks and checks
every value), on torch's OpenMP threads and on threads of its own (``cpp.use_openmp``; the first
only where the module's OpenMP is torch's runtime). All write the same row of a (num_blocks, k, B)
float32 buffer (MiniLM's, 1.36 GB, is past ``cpp.STREAM_MIN_BYTES``: the C++ pass streams its rows);
they run in a random order each repeat (the one that runs after the other measured differently, whichever
it was), three gradients in turn so neither reads from cache what the other just read.
Reports median and quartiles in ms and the GB/s of the bytes either must move (read the
gradient and the mask, write the row). Needs the C++ CPU extension (``pip install -e .``).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_prune_gpu import minilm_shapes  # noqa: E402  (the encoder's 36 Linear weights)



def case(sizes: list[int], B: int, k: int, masked: bool, seed: int):
    """(buffer, first blocks, three gradients, keep-masks): the inputs of one configuration."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    nbs = [-(-d // B) for d in sizes]
    first = [sum(nbs[:i]) for i in range(len(sizes))]
    grads = [[torch.randn(d, generator=gen) for d in sizes] for _ in range(3)]
    keeps = [torch.rand(d, generator=gen) < 0.5 if masked else None for d in sizes]
    return torch.zeros(sum(nbs), k, B), first, grads, keeps


def time_pair(sizes, B, k, masked, repeats, seed) -> dict[str, list[float]]:
    import time

    from obert_kernels import ops
    from obert_kernels.core.grad_buffer import check_all_finite, write_row
    from obert_kernels.ops.backends import cpp

    buffer, first, grads, keeps = case(sizes, B, k, masked, seed)
    names = [str(i) for i in range(len(sizes))]

    def per_tensor(row, g):
        check_all_finite(names, g)
        for i, x in enumerate(g):
            write_row(buffer[first[i]:first[i] + -(-x.numel() // B), row], x, keeps[i])

    def one_pass(row, g):
        if ops.copy_rows(buffer, row, g, keeps, first) != -1:
            raise RuntimeError("a finite gradient was refused")

    ways = {"torch per tensor": per_tensor, "C++ one pass": one_pass, "C++ one pass, own threads": one_pass}
    times = {name: [] for name in ways}
    order = random.Random(seed)
    for r in range(repeats + 1):
        names_now = list(ways)
        order.shuffle(names_now)
        for name in names_now:
            cpp.use_openmp(name != "C++ one pass, own threads")  # outside the timing
            start = time.perf_counter()
            ways[name](r % k, grads[r % 3])
            if r:  # the first round warms up
                times[name].append(1e3 * (time.perf_counter() - start))
    cpp.use_openmp(True)
    return times


def report(label: str, sizes, masked: bool, times: dict[str, list[float]]) -> list[str]:
    d = sum(sizes)
    gbytes = (4 * d * 2 + (d if masked else 0)) / 1e9
    out = []
    for name, ms in times.items():
        q = statistics.quantiles(ms, n=4)
        med = statistics.median(ms)
        out.append(f"| {label} | {'yes' if masked else 'no'} | {name} | {med:.2f} | {q[0]:.2f}-{q[2]:.2f} | {gbytes / med * 1e3:.1f} |")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args(argv)

    import torch

    from obert_kernels.ops.backends import cpp

    if not cpp.available():
        raise SystemExit(f"bench_copy_rows_cpu: {cpp.status()}")
    configs = [("MiniLM, 36 tensors, B=32", [a * b for _, (a, b) in minilm_shapes()], 32),
               ("d=1e6, one tensor, B=50", [1_000_000], 50)]
    cpp.use_openmp(True)
    lines = [f"gradient buffer copy, k = 32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"{args.repeats} repeats in random order; C++ one pass on {cpp.threads()}", "",
             "| gradient | keep-masks | path | median ms | quartiles ms | GB/s |", "| --- | --- | --- | ---: | --- | ---: |"]
    for label, sizes, B in configs:
        for masked in (False, True):
            lines += report(label, sizes, masked, time_pair(sizes, B, 32, masked, args.repeats, args.seed))
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
