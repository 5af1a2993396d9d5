"""Dense against packed F on a MiniLM one-shot prune, on the CPU (issue 15: which storage the CPU defaults to).

all-MiniLM-L6-v2, its 36 encoder Linear weights (10.6M), m Gauss-Newton gradients of --batch
sentences, B = 32, k = 32, ``damp`` as given (default "auto"). Each round, two FisherPruners
(fisher_storage "dense" and "packed") receive the same gradients, the order of the two
``add_grads`` calls alternating gradient by gradient; each call is timed (the first, which
allocates F and the buffer, on its own). Then each runs ``prune(S)`` once, timed, the order of
the two alternating between rounds. Reported: the medians over --repeats rounds of the
collection's pruner time (first call, the rest) and of the prune step, and whether the two
storages pruned the same weights to the same values (they should: the cpp backend reads both
by their upper triangles).

    python bench/bench_storage_cpu.py               # m = 256, S = 0.8, 3 rounds; bench/results/storage-cpu-<date>.{json,txt}
    python bench/bench_storage_cpu.py --num-grads 40 --repeats 1 --no-save   # a smoke run

Wall clock on the machine as found: the header records the load average; time it with nothing
else running.
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
from obert_kernels.app.info import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_ARGS = ["--num-grads", "40", "--repeats", "1", "--no-save"]  # `obert-kernels bench --quick`: a smoke run
STORAGES = ("dense", "packed")


def make_pruner(weights: dict, args, storage: str) -> tuple[FisherPruner, dict]:
    """A pruner of copies of the weights (each prunes its own), and the copies."""
    copies = {n: w.detach().clone() for n, w in weights.items()}
    return FisherPruner(copies, block_size=args.block_size, num_grads=args.num_grads, chunk_size=args.chunk_size,
                        damp=args.damp, fisher_storage=storage, verbose=False), copies


def collect(encoder, weights: dict, pruners: dict, args) -> dict:
    """m gradients (the same batches and probe draws every round), each given to both pruners, the
    order alternating; storage -> {"first": s, "rest": s} of add_grads time."""
    from obert_kernels.app.text import stdlib_sentences
    from obert_kernels.integrations.hf_models import sentence_batches
    from obert_kernels.recipes.probes import GaussNewtonProbe

    probe = GaussNewtonProbe(encoder.embed, seed=args.seed)
    spent = {s: {"first": 0.0, "rest": 0.0} for s in pruners}
    batches = islice(sentence_batches(encoder, stdlib_sentences(2000), args.batch, seed=args.seed), args.num_grads)
    for i, batch in enumerate(batches):
        encoder.model.zero_grad(set_to_none=True)
        probe(encoder.model, batch).backward()
        grads = {n: w.grad for n, w in weights.items()}
        for storage in (STORAGES if i % 2 == 0 else STORAGES[::-1]):
            start = time.perf_counter()
            pruners[storage].add_grads(grads)
            spent[storage]["first" if i == 0 else "rest"] += time.perf_counter() - start
    return spent


def same_result(a: FisherPruner, b: FisherPruner, wa: dict, wb: dict) -> dict:
    """Whether two pruners pruned the same weights, and the largest difference of their weights wa, wb."""
    same_masks = all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    diff = max(float((wa[n] - wb[n]).abs().max()) for n in wa)
    return {"same_masks": same_masks, "max_abs_weight_diff": diff}


def one_round(encoder, weights, args, r: int) -> dict:
    made = {s: make_pruner(weights, args, s) for s in STORAGES}
    pruners = {s: p for s, (p, _) in made.items()}
    spent = collect(encoder, weights, pruners, args)
    prune_s = {}
    for storage in (STORAGES if r % 2 == 0 else STORAGES[::-1]):
        start = time.perf_counter()
        pruners[storage].prune(args.sparsity)
        prune_s[storage] = time.perf_counter() - start
    return {"add_grads": spent, "prune_s": prune_s, **same_result(pruners["dense"], pruners["packed"],
                                                                  made["dense"][1], made["packed"][1])}


def run(args) -> dict:
    load_start = os.getloadavg()
    encoder, weights = load_model(args.max_length)
    rounds = [one_round(encoder, weights, args, r) for r in range(args.repeats)]
    med = {s: {"first": statistics.median(x["add_grads"][s]["first"] for x in rounds),
               "rest": statistics.median(x["add_grads"][s]["rest"] for x in rounds),
               "prune": statistics.median(x["prune_s"][s] for x in rounds)} for s in STORAGES}
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load_start": load_start,
            "load_end": os.getloadavg(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "cores": os.cpu_count(), "cpu": cpu_name(),
            "args": vars(args) | {"out": str(args.out)}, "rounds": rounds, "median_s": med}


def report_text(res: dict, command: str) -> str:
    a, med = res["args"], res["median_s"]
    lines = [f"dense vs packed F on a MiniLM prune (issue 15) — {res['date']}; {res['cpu']}, {res['cores']} cores, "
             f"torch {res['torch']} ({res['threads']} threads), Python {res['python']}; load average at start "
             f"{res['load_start'][0]:.2f}, at end {res['load_end'][0]:.2f}",
             f"command: {command}",
             f"all-MiniLM-L6-v2, 36 encoder Linear weights, m={a['num_grads']} gradients of {a['batch']} sentences, "
             f"B={a['block_size']}, k={a['chunk_size']}, damp={a['damp']}, prune to {a['sparsity']:.0%}, "
             f"{a['repeats']} rounds (medians)", "",
             "| storage | add_grads first call s | add_grads rest s | prune() s | collect + prune s |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for s in STORAGES:
        m = med[s]
        lines.append(f"| {s} | {m['first']:.2f} | {m['rest']:.2f} | {m['prune']:.2f} | {m['first'] + m['rest'] + m['prune']:.2f} |")
    lines.append("")
    for i, x in enumerate(res["rounds"]):
        cells = ", ".join(f"{s}: first {x['add_grads'][s]['first']:.2f} rest {x['add_grads'][s]['rest']:.2f} "
                          f"prune {x['prune_s'][s]:.2f}" for s in STORAGES)
        lines.append(f"round {i}: {cells}; same masks {x['same_masks']}, max |Δw| {x['max_abs_weight_diff']:.3g}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--damp", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / f"storage-cpu-{datetime.now(timezone.utc):%Y-%m-%d}")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    return run_and_save("bench_storage_cpu.py", parse_args(argv), run, report_text, argv)


if __name__ == "__main__":
    main()
