"""What damp="auto" costs a MiniLM prune step on the CPU (issue 12: "at most a few seconds").

all-MiniLM-L6-v2, its 36 encoder Linear weights (10.6M), m Gauss-Newton gradients of
--batch sentences, B = 32, k = 32. Two FisherPruners receive the same gradients (each prunes
its own copy of the weights); then each runs ``prune(S)`` once, timed: one with damp="auto",
one with a fixed damp (default ``rel:0.01``). Everything but the damping is the same work
(flush, inversion, scores, selection, update), so the difference is what ``auto`` adds:
its fit on the held-out chunk (the candidates' prune steps scored on sampled blocks).
--repeats rounds, each collecting the gradients afresh (same batches) into a new pair of
pruners, the order of the two prune steps alternating; the median is reported.

    python bench/bench_auto_damp_cpu.py                 # m = 256, S = 0.8; writes bench/results/auto-damp-cpu-<date>.{json,txt}
    python bench/bench_auto_damp_cpu.py --num-grads 32 --repeats 1 --no-save   # a smoke run

Times are wall clock on the machine as found: the header records the load average; only a
quiet machine's figures are for the README.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_prune_common import add_common_args, load_model, run_and_save  # noqa: E402
from obert_kernels import FisherPruner  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def collect(encoder, weights: dict, pruners: list[FisherPruner], args) -> None:
    """m Gauss-Newton gradients, the same batches and probe draws every round, each given to every pruner."""
    from obert_kernels.app.text import stdlib_sentences
    from obert_kernels.integrations.hf_models import sentence_batches
    from obert_kernels.recipes.probes import GaussNewtonProbe

    probe = GaussNewtonProbe(encoder.embed, seed=args.seed)
    for batch in islice(sentence_batches(encoder, stdlib_sentences(2000), args.batch, seed=args.seed), args.num_grads):
        encoder.model.zero_grad(set_to_none=True)
        probe(encoder.model, batch).backward()
        grads = {n: w.grad for n, w in weights.items()}
        for pruner in pruners:
            pruner.add_grads(grads)


def make_pruner(weights: dict, args, damp) -> FisherPruner:
    """A pruner of copies of the weights (each prunes its own)."""
    return FisherPruner({n: w.detach().clone() for n, w in weights.items()}, block_size=args.block_size,
                        num_grads=args.num_grads, chunk_size=args.chunk_size, damp=damp, verbose=False)


def timed_prune(pruner: FisherPruner, sparsity: float) -> tuple[float, str]:
    """Seconds of one prune(S), and the damping the report names."""
    start = time.perf_counter()
    report = pruner.prune(sparsity)
    return time.perf_counter() - start, report.damping


def run(args) -> dict:
    """--repeats rounds: fresh pruners (auto, fixed) fed the same gradients, then each prune step timed, the
    order alternating between rounds."""
    load_start = os.getloadavg()
    encoder, weights = load_model(args.max_length)
    damps = ["auto", args.fixed]
    seconds, chosen = {d: [] for d in damps}, {}
    for r in range(args.repeats):
        pruners = {d: make_pruner(weights, args, d) for d in damps}
        collect(encoder, weights, list(pruners.values()), args)
        for damp in (damps if r % 2 == 0 else damps[::-1]):
            s, chosen[damp] = timed_prune(pruners.pop(damp), args.sparsity)
            seconds[damp].append(s)
    med = {d: statistics.median(v) for d, v in seconds.items()}
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_start": load_start,
            "load_end": os.getloadavg(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cores": os.cpu_count(), "args": vars(args) | {"out": str(args.out)},
            "seconds": seconds, "median_s": med, "chosen": chosen, "auto_adds_s": med["auto"] - med[args.fixed]}


def report_text(res: dict, command: str) -> str:
    a = res["args"]
    lines = [f"damp='auto' on a MiniLM prune step (issue 12) — {res['date']}; {res['cores']} cores, torch {res['torch']} "
             f"({res['threads']} threads), Python {res['python']}; load average at start {res['load_start'][0]:.2f}, "
             f"at end {res['load_end'][0]:.2f}",
             f"command: {command}",
             f"all-MiniLM-L6-v2, 36 encoder Linear weights, m={a['num_grads']} gradients of {a['batch']} sentences, "
             f"B={a['block_size']}, k={a['chunk_size']}, prune to {a['sparsity']:.0%}, {a['repeats']} runs each (median)", "",
             "| damp | chosen | prune() s (median) | runs |", "| --- | --- | ---: | --- |"]
    for damp, runs in res["seconds"].items():
        lines.append(f"| {damp} | {res['chosen'][damp]} | {res['median_s'][damp]:.2f} | "
                     + ", ".join(f"{s:.2f}" for s in runs) + " |")
    lines += ["", f"auto adds {res['auto_adds_s']:.2f} s to the prune step"]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--fixed", default="rel:0.01", help="the fixed damp the auto step is compared with")
    ap.add_argument("--out", type=Path, default=RESULTS / f"auto-damp-cpu-{datetime.now(timezone.utc):%Y-%m-%d}")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    return run_and_save("bench_auto_damp_cpu.py", parse_args(argv), run, report_text, argv)


if __name__ == "__main__":
    main()
