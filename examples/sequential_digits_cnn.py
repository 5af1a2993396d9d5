"""Sequential OBS vs obs / joint / magnitude on a small CNN for scikit-learn's digits (issue 11).

A CNN conv(1→16, 3) - ReLU - conv(16→32, 3) - ReLU - flatten - linear(512→10) is trained on the
8×8 digits, then pruned one-shot (all three weights, one global threshold) with the empirical
Fisher (B = 32, m = 256 gradients of mini-batches of 8, damp 1e-6) at 90% (R = 1), 95% (R = 8)
and 97% (R = 8) by:

  magnitude       smallest |w|, no update
  obs             oBERT's summed single-weight updates (update="obs", the package default)
  joint           exact joint OBS update of the same selection (update="joint")
  seq-cumulative  greedy removal per block (update="sequential", SPEC §2d), steps ranked by the
                  cumulative loss L_b(k) (sequential_select.CRITERION = "cumulative", the default)
  seq-increment   the same, steps ranked by the running maximum of the loss each step adds
                  (criterion "increment")

Every method sees the same gradient batches (one seeded stream per seed) and starts from the
same trained model. Prints a table (test accuracy, mean over seeds and each seed) and writes JSON.

    OMP_NUM_THREADS=1 python examples/sequential_digits_cnn.py --out bench/results/sequential-digits-cnn.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels.core import sequential_select  # noqa: E402
from obert_kernels import magnitude_prune  # noqa: E402
from obert_kernels.app.demo import accuracy, cross_entropy_loss, endless_batches, load_digits_data  # noqa: E402
from obert_kernels import one_shot_prune  # noqa: E402

SETTINGS = [(0.90, 1), (0.95, 8), (0.97, 8)]
METHODS = ["magnitude", "obs", "joint", "seq-cumulative", "seq-increment"]


class Image(nn.Module):
    """(n, 64) digits -> (n, 1, 8, 8) images."""

    def forward(self, x):
        return x.reshape(-1, 1, 8, 8)


def make_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Image(), nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 4 * 4, 10))


def train(model: nn.Module, data, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.x_train), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    return model


def prune_copy(dense: nn.Module, data, method: str, sparsity: float, R: int, args, seed: int) -> tuple[nn.Module, list[str]]:
    """A pruned copy of ``dense`` (the model's Conv/Linear weights, global sparsity), and each
    prune step's damping (``PruneReport.damping``: for "auto", the λ it chose; none for magnitude)."""
    model = copy.deepcopy(dense)
    if method == "magnitude":
        magnitude_prune(model, sparsity)
        return model, []
    update = "sequential" if method.startswith("seq") else method
    saved = sequential_select.CRITERION
    sequential_select.CRITERION = method.removeprefix("seq-") if method.startswith("seq-") else saved
    try:
        pruner = one_shot_prune(model, cross_entropy_loss, endless_batches(data, args.grad_batch_size, seed + 1),
                                sparsity, num_recomputations=R, block_size=args.block_size, num_grads=args.num_grads,
                                damp=args.damp, update=update, progress=False, verbose=False)
    finally:
        sequential_select.CRITERION = saved
    return model, [r.damping for r in pruner.history]


def run_seed(seed: int, args) -> dict:
    data = load_digits_data(seed)
    dense = train(make_cnn(seed), data, args.epochs, seed)
    out = {"seed": seed, "dense": accuracy(dense, data.x_test, data.y_test), "runs": []}
    for sparsity, R in SETTINGS:
        for method in METHODS:
            start = time.perf_counter()
            model, damping = prune_copy(dense, data, method, sparsity, R, args, seed)
            acc = accuracy(model, data.x_test, data.y_test)
            out["runs"].append({"sparsity": sparsity, "R": R, "method": method, "accuracy": acc,
                                "seconds": time.perf_counter() - start, "damping": damping})
            print(f"seed {seed} {sparsity:.0%} R={R} {method:<15} {acc:.2%}"
                  + (f"  damp per step: {'; '.join(damping)}" if damping else ""), file=sys.stderr, flush=True)
    return out


def table(results: list[dict]) -> str:
    dense = [r["dense"] for r in results]
    lines = [f"digits CNN (conv16-conv32-linear, 9,872 prunable weights), dense test accuracy "
             f"{' / '.join(f'{a:.1%}' for a in dense)} (seeds {', '.join(str(r['seed']) for r in results)})",
             "test accuracy %, mean over seeds [each seed]", "",
             "| sparsity, recomputations | " + " | ".join(METHODS) + " |", "| --- |" + " ---: |" * len(METHODS)]
    for sparsity, R in SETTINGS:
        cells = []
        for m in METHODS:
            accs = [x["accuracy"] for r in results for x in r["runs"] if (x["sparsity"], x["R"], x["method"]) == (sparsity, R, m)]
            cells.append(f"{100 * sum(accs) / len(accs):.1f} [{' '.join(f'{100 * a:.1f}' for a in accs)}]")
        lines.append(f"| {sparsity:.0%}, R = {R} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--num-grads", type=int, default=256)
    ap.add_argument("--grad-batch-size", type=int, default=8)
    ap.add_argument("--damp", default="1e-6", help="FisherPruner damp: a number (absolute λ), rel:α[:per] or auto")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = [run_seed(s, args) for s in args.seeds]
    text = table(results)
    print(text)
    report = {"experiment": "sequential-digits-cnn", "date": str(date.today()), "args": {k: str(v) for k, v in vars(args).items()},
              "torch": torch.__version__, "machine": platform.machine(), "seconds": time.perf_counter() - start,
              "results": results, "table": text}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
