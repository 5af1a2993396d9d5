"""Gradual oBERT + distillation vs GMP + distillation vs one-shot oBERT + recovery, on the digits MLP.

For each seed (the data split, the initialisation and the batches), the demo's MLP
(64-128-128-10, scikit-learn's digits) is trained dense, then from that one dense model:

- gradual oBERT: ``gradual_prune`` for --steps steps of distillation from the dense model
  (hardness --hardness, temperature --temperature), cubic schedule up to --prune-end (2/5 of the steps; the table in the README used 3/4), a
  fresh cross-entropy Fisher (m gradients of 8 images) at each pruning step;
- GMP: the same call with method="magnitude" (same schedule, loss, optimizer, steps);
- one-shot oBERT (R = 4 steps, the same Fisher) then ``finetune_with_masks`` for the same
  number of distillation steps;
- dense: the same fine-tuning without pruning (its time is the baseline of the cost).

Test accuracy per method; differences with a paired 95% interval over (seed, test image).

    python examples/digits_gradual_table.py                      # 95/97/98%, 3 seeds
    python examples/digits_gradual_table.py --seeds 0 --sparsities 0.9 --steps 300   # a quick look
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels.app.demo import cross_entropy_loss, endless_batches, load_digits_data, make_mlp, train  # noqa: E402
from obert_kernels.app.gradual_command import GRADUAL_DAMP  # noqa: E402
from obert_kernels.app.info import cpu_name, versions  # noqa: E402
from obert_kernels.core.pruner import prunable_weights  # noqa: E402
from obert_kernels.recipes.distillation import DistillationLoss  # noqa: E402
from obert_kernels.recipes.gradual_training import PRUNE_END_FRACTION, finetune_with_masks, gradual_prune, prune_end_step  # noqa: E402
from obert_kernels.recipes.prune_model import prune_model  # noqa: E402

METHODS = ("gradual oBERT", "GMP", "one-shot oBERT R=4 + recovery", "dense fine-tune")


def _distill(model, args):
    return DistillationLoss(model, forward=lambda m, b: m(b[0]), task_loss=lambda out, b: nn.functional.cross_entropy(out, b[1]),
                            hardness=args.hardness, temperature=args.temperature)


def _pruner_kwargs(args):
    return dict(block_size=args.block_size, num_grads=args.num_grads, damp=args.damp, verbose=False)


def run_method(method, dense, data, sparsity, seed, args):
    model = copy.deepcopy(dense)
    params = prunable_weights(model)
    loss = _distill(model, args)
    train_batches = endless_batches(data, args.batch_size, seed + 2)
    common = dict(lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup, progress=False)
    start = time.perf_counter()
    if method in ("gradual oBERT", "GMP"):
        obert = method == "gradual oBERT"
        run = gradual_prune(model, params, loss, train_batches, sparsity, args.steps, method="obs" if obert else "magnitude",
                            fisher_loss=cross_entropy_loss if obert else None,
                            fisher_batches=endless_batches(data, 8, seed + 1) if obert else None,
                            update_every=args.update_every, prune_end=prune_end_step(args.prune_end, args.steps), **common, **(_pruner_kwargs(args) if obert else {}))
    elif method == "dense fine-tune":
        run = finetune_with_masks(model, params, None, loss, train_batches, args.steps, **common)
    elif method == "one-shot oBERT R=4 + recovery":
        oneshot = prune_model(model, params, "obs", sparsity, loss_fn=cross_entropy_loss,
                              batches=endless_batches(data, 8, seed + 1), num_recomputations=4, progress=False,
                              **_pruner_kwargs(args))
        run = finetune_with_masks(model, params, oneshot.masks, loss, train_batches, args.steps, **common)
        run.prune_seconds += oneshot.meter.total_seconds()
    else:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    seconds = time.perf_counter() - start
    with torch.no_grad():
        correct = (model(data.x_test).argmax(-1) == data.y_test)
    zeros = sum(int((t == 0).sum()) for _, t in params) / sum(t.numel() for _, t in params)
    return {"method": method, "sparsity": sparsity, "seed": seed, "accuracy": correct.double().mean().item(),
            "correct": correct.tolist(), "measured_sparsity": zeros, "seconds": seconds,
            "train_s": run.train_seconds, "prune_s": run.prune_seconds}


def paired(rows, a, b, s):
    """Mean and 95% normal interval of accuracy(a) − accuracy(b), paired over (seed, test image)."""
    pick = lambda m: torch.tensor(sum((r["correct"] for r in sorted(rows, key=lambda r: r["seed"])
                                      if r["method"] == m and r["sparsity"] == s), []), dtype=torch.float64)
    diff = pick(a) - pick(b)
    half = 1.96 * diff.std().item() / diff.numel() ** 0.5
    return diff.mean().item(), diff.mean().item() - half, diff.mean().item() + half


def table(rows, args, dense_acc):
    lines = [f"| sparsity | method | test accuracy (mean over {len(args.seeds)} seeds) | per seed | measured sparsity | seconds (train + prune) |",
             "| ---: | --- | ---: | --- | ---: | ---: |"]
    for s in args.sparsities:
        for m in METHODS:
            rs = sorted([r for r in rows if r["method"] == m and r["sparsity"] == s], key=lambda r: r["seed"])
            if not rs:
                continue
            acc = sum(r["accuracy"] for r in rs) / len(rs)
            sec = sum(r["train_s"] + r["prune_s"] for r in rs) / len(rs)
            sp = "-" if m == "dense fine-tune" else f"{sum(r['measured_sparsity'] for r in rs) / len(rs):.2%}"
            label = f"{m} ({s:.0%})" if m != "dense fine-tune" else m
            each = ", ".join(f"{r['accuracy']:.2%}" for r in rs)
            lines.append(f"| {s:.0%} | {label} | {acc:.2%} | {each} | {sp} | {sec:.1f} |")
    lines += ["", f"dense (before fine-tuning), mean over seeds: {sum(dense_acc) / len(dense_acc):.2%}", "",
              "paired differences of test accuracy (95% interval over seed × test image):"]
    for s in args.sparsities:
        for a, b in (("gradual oBERT", "GMP"), ("gradual oBERT", "one-shot oBERT R=4 + recovery")):
            if any(r["method"] == a and r["sparsity"] == s for r in rows) and any(r["method"] == b and r["sparsity"] == s for r in rows):
                mean, lo, hi = paired(rows, a, b, s)
                lines.append(f"  {s:.0%}: {a} − {b}: {mean:+.2%} [{lo:+.2%}, {hi:+.2%}]")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.95, 0.97, 0.98])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps of distillation (each method)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--update-every", type=int, default=None, help="default: 10 pruning steps up to --prune-end")
    ap.add_argument("--prune-end", type=float, default=PRUNE_END_FRACTION,
                    help="gradual runs reach the target at this fraction of --steps; the rest recovers with masks fixed")
    ap.add_argument("--hardness", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--num-grads", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--damp", default=GRADUAL_DAMP, help="default: what prune --gradual uses (%(default)s)")
    # choices: an unknown name once ran the one-shot branch under that name (2026-11-30, `--methods gradual`)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/digits-gradual-{date.today()}"))
    args = ap.parse_args(argv)
    load = os.getloadavg()
    rows, dense_acc = [], []
    for seed in args.seeds:
        data = load_digits_data(seed)
        dense = train(make_mlp(seed), data, seed=seed)
        with torch.no_grad():
            dense_acc.append((dense(data.x_test).argmax(-1) == data.y_test).double().mean().item())
        for s in args.sparsities:
            for m in args.methods:
                if m == "dense fine-tune" and s != args.sparsities[0]:
                    continue
                rows.append(run_method(m, dense, data, s, seed, args))
                r = rows[-1]
                print(f"seed {seed} {s:.0%} {m}: {r['accuracy']:.2%} (sparsity {r['measured_sparsity']:.2%}, "
                      f"{r['train_s']:.1f} s train + {r['prune_s']:.1f} s prune)", file=sys.stderr, flush=True)
    for r in rows:
        if r["method"] == "dense fine-tune":
            r["sparsity"] = args.sparsities[0]
    head = (f"digits MLP 64-128-128-10; {args.steps} steps of distillation (h={args.hardness}, T={args.temperature}), "
            f"batch {args.batch_size}, AdamW lr {args.lr} linear decay, weight decay {args.weight_decay}; oBERT: obs, "
            f"B={args.block_size}, m={args.num_grads} fresh cross-entropy gradients of 8 images, damp {args.damp}; "
            f"seeds {args.seeds}")
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {date.today()}"
    lines = [head, f"machine: {machine}; load average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (times: loaded machine)",
             f"command: python examples/digits_gradual_table.py {' '.join(argv if argv is not None else sys.argv[1:])}", ""]
    lines += table(rows, args, dense_acc)
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / (args.out.name + ".txt")).write_text(text + "\n")
    (args.out.parent / (args.out.name + ".json")).write_text(json.dumps({"header": head, "machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                                         "versions": versions(), "dense_accuracy": dense_acc,
                                                         "rows": [{k: v for k, v in r.items() if k != "correct"} for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
