"""Damping policies on the digits MLP and a digits CNN, one-shot, against magnitude pruning (issue 12).

Nets (scikit-learn's 8×8 digits, trained here, test accuracy):
  mlp  the CLI's ``digits-mlp`` (64-128-128-10, 25,856 weights), B = 50, m = 256 (the CLI defaults)
  cnn  examples/sequential_digits_cnn.py's conv16-conv32-linear (9,872 weights), B = 32, m = 256
Gradients: mini-batches of 8, one seeded stream per net, collected once and fed to every
policy, so the policies differ by the damping only. Fisher labels: "true" (the data's labels:
the empirical Fisher, as the CLI) or "sampled" (labels drawn from the model's own softmax:
``recipes.probes.SampledFisherProbe``). One prune step (R = 1), global selection, update obs (``--update`` for another).

Policies: magnitude; ``rel:α:tensor`` (per-tensor λ, the string default before issue 12);
``rel:α:global`` (one λ for all tensors); ``auto:tensor:likelihood`` (the old auto),
``auto:global:full:1se`` (the new default ``auto``: the prune step's held-out loss increase,
one-standard-error rule), ``auto:global:full:min`` (the least increase) and
``auto:global:block:min`` (block-diagonal held-out Fisher, least increase).

    OMP_NUM_THREADS=1 python examples/damping_table.py --seeds 0 1 2 --out bench/results/damping-digits-2026-11-30.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from obert_kernels import FisherPruner, magnitude_prune  # noqa: E402
from obert_kernels.app.demo import (accuracy, cross_entropy_loss, endless_batches, load_digits_data, make_mlp,  # noqa: E402
                                    train)
from obert_kernels.core.pruner import prunable_weights  # noqa: E402
from obert_kernels.recipes.probes import SampledFisherProbe  # noqa: E402
from sequential_digits_cnn import make_cnn, train as train_cnn  # noqa: E402

SPARSITIES = (0.7, 0.8, 0.9, 0.95)
POLICIES = ("magnitude", "rel:1e-3:tensor", "rel:1e-2:tensor", "rel:1e-1:tensor",
            "rel:1e-4:global", "rel:1e-3:global", "rel:1e-2:global", "rel:1e-1:global", "rel:1:global",
            "auto:tensor:likelihood", "auto:global:full:min", "auto:global:full:1se", "auto:global:block:min")
NETS = {"mlp": {"block_size": 50, "num_grads": 256}, "cnn": {"block_size": 32, "num_grads": 256}}


def trained(net: str, data, seed: int) -> nn.Module:
    if net == "mlp":  # as app/prune_command.py builds digits-mlp
        return train(make_mlp(seed), data, seed=seed)
    return train_cnn(make_cnn(seed), data, 40, seed)


def sampled_forward(model, batch):
    return model(batch[0])


def collect(model: nn.Module, data, labels: str, m: int, seed: int) -> list[list[torch.Tensor]]:
    """m gradients (each a list in prunable_weights order) of mini-batches of 8."""
    loss_fn = cross_entropy_loss if labels == "true" else SampledFisherProbe(sampled_forward, seed=seed)
    params = [t for _, t in prunable_weights(model)]
    grads, batches = [], endless_batches(data, 8, seed + 1)
    for _ in range(m):
        model.zero_grad()
        loss_fn(model, next(batches)).backward()
        grads.append([p.grad.detach().clone() for p in params])
    model.zero_grad()
    return grads


def prune_once(dense: nn.Module, grads, policy: str, sparsity: float, settings: dict, chunk: int,
               update: str = "obs") -> tuple[nn.Module, str]:
    model = copy.deepcopy(dense)
    if policy == "magnitude":
        magnitude_prune(model, sparsity)
        return model, ""
    pruner = FisherPruner(prunable_weights(model), damp=policy, chunk_size=chunk, update=update, verbose=False, **settings)
    for g in grads:
        pruner.add_grads(g)
    report = pruner.prune(sparsity)
    chosen = f"{pruner.damping.chosen:.3g}" if getattr(pruner.damping, "chosen", None) is not None else ""
    tensors = {n: round(t.sparsity, 4) for n, t in report.tensors.items()}
    return model, json.dumps({"chosen": chosen, "tensors": tensors})


def run(args, partial: Path | None = None) -> list[dict]:
    rows = []
    for seed in args.seeds:
        data = load_digits_data(seed)
        for net in args.nets:
            dense = trained(net, data, seed)
            dense_acc = accuracy(dense, data.x_test, data.y_test)
            for labels in args.labels:
                grads = collect(copy.deepcopy(dense), data, labels, NETS[net]["num_grads"], seed)
                for s in args.sparsities:
                    for policy in args.policies:
                        if policy == "magnitude" and labels != args.labels[0]:
                            continue
                        start = time.perf_counter()
                        model, extra = prune_once(dense, grads, policy, s, NETS[net], args.chunk_size, args.update)
                        acc = accuracy(model, data.x_test, data.y_test)
                        info = json.loads(extra) if extra else {}
                        rows.append({"net": net, "seed": seed, "labels": labels, "sparsity": s, "policy": policy,
                                     "accuracy": acc, "dense": dense_acc, "chosen": info.get("chosen", ""),
                                     "tensor_sparsity": info.get("tensors", {}), "seconds": time.perf_counter() - start})
                        if partial is not None:  # rows survive a stopped run
                            with partial.open("a") as f:
                                f.write(json.dumps(rows[-1]) + "\n")
                        print(f"{net} seed {seed} {labels:>7} {s:.0%} {policy:<24} {acc:.2%} {info.get('chosen', '')}",
                              file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one row per (net, labels, policy), a column per sparsity; mean over seeds [chosen α]."""
    lines = []
    keys = sorted({(r["net"], r["labels"]) for r in rows})
    sparsities = sorted({r["sparsity"] for r in rows})
    for net, labels in keys:
        mine = [r for r in rows if r["net"] == net and r["labels"] == labels]
        dense = sorted({round(r["dense"], 4) for r in mine})
        lines += ["", f"{net}, {labels} labels (dense {', '.join(f'{100 * d:.1f}%' for d in dense)}), test accuracy %",
                  "", "| policy | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "| --- |" + " ---: |" * len(sparsities)]
        for policy in dict.fromkeys(r["policy"] for r in mine):
            cells = []
            for s in sparsities:
                got = [r for r in mine if r["policy"] == policy and r["sparsity"] == s]
                acc = sum(r["accuracy"] for r in got) / len(got)
                chosen = ",".join(r["chosen"] for r in got if r["chosen"])
                cells.append(f"{100 * acc:.1f}" + (f" ({chosen})" if chosen else ""))
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--labels", nargs="+", default=["true", "sampled"], choices=["true", "sampled"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--update", default="obs", choices=["obs", "joint", "sequential"], help="FisherPruner's update")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = run(args, args.out.with_suffix(".partial.jsonl") if args.out else None)
    text = table(rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(),
                                        "machine": platform.processor() or platform.machine(), "rows": rows,
                                        "table": text}, indent=1))
    return rows


if __name__ == "__main__":
    main()
