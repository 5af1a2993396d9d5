"""Gradual pruning with distillation on all-MiniLM-L6-v2: gradual oBERT vs GMP vs one-shot oBERT + recovery.

All 36 encoder Linear weights (10.6M) pruned with one global threshold, each method
fine-tuned for the same --steps AdamW steps of embedding distillation (1 − cos between the
student's and the dense model's sentence embeddings) on stdlib docstring sentences, word
embeddings frozen, linear LR decay:

- gradual oBERT (obs): ``gradual_prune``, cubic schedule over the first 2/5 of the steps (--prune-end;
  the rest recovers with the masks fixed), a pruning step every --update-every = 40 steps (4 steps), each with a fresh Gauss-Newton Fisher
  (m = --gradual-grads = 256 gradients of --batch-size sentences, as many as each one-shot step), damp --damp;
- GMP: the same call with method="magnitude";
- one-shot oBERT, R = 4 steps (m = --num-grads each, as examples/minilm_prune_table.py),
  then ``finetune_with_masks`` for the same steps;
- dense fine-tune (once): the same training without pruning, the baseline of the cost.

Held-out (disjoint) sentences measure mean cosine and nearest-neighbour agreement with the
dense model, as in minilm_prune_table.py, with paired 95% intervals of the differences.

    python examples/minilm_gradual_table.py                     # the table (80%, 90%)
    python examples/minilm_gradual_table.py --sparsities 0.8 --steps 20 --gradual-grads 8 --num-grads 8 --eval 100   # a check

--merge A.json B.json ... runs nothing: it renders one table (and the paired intervals) from earlier runs' .json,
e.g. one sparsity each made by separate processes. They must share the protocol (steps, lr, batch sizes, m, B, k,
damp, held-out count, max length, seed: PROTOCOL_ARGS, and the header, which also names the sentence split and the
Python version whose docstrings they are); it refuses, naming the difference, otherwise, and refuses a (method,
sparsity) row found in two files. The first dense fine-tune row found is the cost baseline. The merged .json records
the files and each part's machine, load, time and command lines.

--plot PATH.png (with a run or --merge) also writes held-out mean cosine (left) and nearest-neighbour agreement
(right) vs measured sparsity, a line per method, dense = 1.0 as the reference; without matplotlib it says so and
writes the table only.

    python examples/minilm_gradual_table.py --merge bench/results/minilm-gradual-80-2026-11-30.json \\
        bench/results/minilm-gradual-90-2026-11-30.json --plot bench/results/minilm-gradual-2026-11-30.png \\
        --out bench/results/minilm-gradual-2026-11-30
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels.app.demo import save_png  # noqa: E402
from obert_kernels.app.gradual_command import GRADUAL_DAMP  # noqa: E402
from obert_kernels.app.info import cpu_name, versions  # noqa: E402
from obert_kernels.app.text import split_sentences, stdlib_sentences  # noqa: E402
from obert_kernels.core.memory import format_bytes  # noqa: E402
from obert_kernels.integrations.hf_models import embedding_agreement, encoder_weights, load_sentence_encoder, sentence_batches  # noqa: E402
from obert_kernels.recipes.distillation import DistillationLoss  # noqa: E402
from obert_kernels.recipes.gradual_training import PRUNE_END_FRACTION, finetune_with_masks, gradual_prune, prune_end_step  # noqa: E402
from obert_kernels.recipes.probes import GaussNewtonProbe  # noqa: E402
from obert_kernels.recipes.prune_model import prune_model  # noqa: E402

GRADUAL, GMP, ONESHOT, DENSE = "gradual oBERT + distill", "GMP + distill", "one-shot oBERT R=4 + distill", "dense fine-tune"


def run_one(method, sparsity, encoder, dense_model, dense_emb, held_out, train_text, args):
    model = copy.deepcopy(dense_model)
    for name, p in model.named_parameters():  # word embeddings frozen: their gradient would triple a step's time
        p.requires_grad_("embeddings." not in name)
    params = encoder_weights(model)
    loss = DistillationLoss(model, forward=encoder.embed, teacher=dense_model, kind="cosine")
    batches = sentence_batches(encoder, train_text, args.train_batch_size, seed=args.seed + 2)
    fisher = dict(loss_fn=GaussNewtonProbe(encoder.embed, seed=args.seed),
                  batches=sentence_batches(encoder, train_text, args.batch_size, seed=args.seed + 1))
    common = dict(lr=args.lr, warmup_steps=args.warmup, progress=args.progress,
                  train_params=[t for t in model.parameters() if t.requires_grad])
    obert = dict(block_size=args.block_size, chunk_size=args.chunk_size, damp=args.damp, verbose=False,
                 max_tensor_sparsity=args.max_tensor_sparsity)
    start = time.perf_counter()
    if method in (GRADUAL, GMP):
        kwargs = dict(method="obs", fisher_loss=fisher["loss_fn"], fisher_batches=fisher["batches"], num_grads=args.gradual_grads,
                      **obert) if method == GRADUAL else dict(method="magnitude")
        run = gradual_prune(model, params, loss, batches, sparsity, args.steps, update_every=args.update_every,
                            prune_end=prune_end_step(args.prune_end, args.steps), init_sparsity=args.init_sparsity, **common, **kwargs)
    elif method == ONESHOT:
        one = prune_model(model, params, "obs", sparsity, num_recomputations=4, progress=args.progress,
                          num_grads=args.num_grads, **fisher, **obert)
        run = finetune_with_masks(model, params, one.masks, loss, batches, args.steps, **common)
        run.prune_seconds += one.meter.total_seconds()
        run.peak_bytes = max(run.peak_bytes, one.meter.max_peak())
    elif method == DENSE:
        run = finetune_with_masks(model, params, None, loss, batches, args.steps, **common)
    else:
        raise ValueError(f"unknown method {method!r}")
    total = time.perf_counter() - start
    metrics = embedding_agreement(dense_emb, encoder.encode(held_out, model=model), per_sentence=True)
    zeros = sum(int((t == 0).sum()) for _, t in params) / sum(t.numel() for _, t in params)
    row = {"method": method, "sparsity": sparsity, "measured_sparsity": zeros, **metrics, "train_s": run.train_seconds,
           "prune_s": run.prune_seconds, "total_s": total, "peak_bytes": run.peak_bytes, "prune_steps": run.prune_steps,
           "loss_last": run.losses[-1]}
    print(f"  {method} at {sparsity:.0%} (measured {zeros:.2%}): cos {metrics['mean_cosine']:.4f} NN {metrics['nn_agreement']:.3f}, "
          f"{run.train_seconds:.0f} s train + {run.prune_seconds:.0f} s prune, peak {format_bytes(run.peak_bytes)}",
          file=sys.stderr, flush=True)
    return row


def fraction_text(fraction: float) -> str:
    """3/4 as the headers always said it (runs merged into one table must have equal headers); others as numbers."""
    return "3/4" if fraction == 0.75 else f"{fraction:g} of the steps"


def paired(a, b, key):
    each = {"mean_cosine": "cosine_each", "nn_agreement": "nn_same"}[key]
    diff = torch.tensor(a[each], dtype=torch.float64) - torch.tensor(b[each], dtype=torch.float64)
    half = 1.96 * diff.std().item() / diff.numel() ** 0.5
    return diff.mean().item(), diff.mean().item() - half, diff.mean().item() + half


def report_lines(rows, dense_row):
    lines = ["| sparsity | method | mean cosine | NN agreement | fine-tune s | prune s | total s | peak RSS |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows + ([dense_row] if dense_row else []):
        s = "0%" if r["method"] == DENSE else f"{r['measured_sparsity']:.0%}"
        lines.append(f"| {s} | {r['method']} | {r['mean_cosine']:.4f} | {r['nn_agreement']:.3f} | {r['train_s']:.0f} | "
                     f"{r['prune_s']:.0f} | {r['total_s']:.0f} | {format_bytes(r['peak_bytes'])} |")
    lines += ["", "gradual oBERT − other, paired 95% interval over the held-out sentences:"]
    for s in sorted({r["sparsity"] for r in rows}):
        g = next((r for r in rows if r["method"] == GRADUAL and r["sparsity"] == s), None)
        for other in (GMP, ONESHOT):
            o = next((r for r in rows if r["method"] == other and r["sparsity"] == s), None)
            if g and o:
                parts = [f"{k} {m:+.4f} [{lo:+.4f}, {hi:+.4f}]" for k, (m, lo, hi) in
                         (("cos", paired(g, o, "mean_cosine")), ("NN", paired(g, o, "nn_agreement")))]
                lines.append(f"  {s:.0%} vs {other}: " + ", ".join(parts))
    if dense_row:
        g = [r for r in rows if r["method"] == GRADUAL]
        for r in g:
            lines.append(f"  cost: gradual oBERT at {r['sparsity']:.0%} took {r['total_s']:.0f} s vs {dense_row['total_s']:.0f} s "
                         f"for the same fine-tuning without pruning (+{r['total_s'] / dense_row['total_s'] - 1:.0%})")
    return lines


PROTOCOL_ARGS = ("steps", "train_batch_size", "lr", "warmup", "gradual_grads", "update_every", "num_grads", "block_size",
                 "chunk_size", "batch_size", "damp", "eval", "max_length", "seed", "prune_end", "max_tensor_sparsity",
                 "init_sparsity")  # runs merged into one table agree on these
ADDED_ARGS = {"prune_end": "0.75", "max_tensor_sparsity": "None", "init_sparsity": "0.0"}  # what runs written before these options existed used


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9])
    ap.add_argument("--methods", nargs="+", default=[GRADUAL, GMP, ONESHOT], choices=[GRADUAL, GMP, ONESHOT])
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of distillation per method")
    ap.add_argument("--train-batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=0)
    # 256: MiniLM at 90%, 2026-11-30 (README, "Gradual pruning with distillation"): 128 -> 256 gained
    # +0.0095 mean cosine; --prune-end's default and its measurements: specs.PRUNE_END_FRACTION
    ap.add_argument("--gradual-grads", type=int, default=256, help="m per pruning step of gradual oBERT")
    # 40: MiniLM at 90%, 2026-11-30, three seeds: 4 pruning steps 40 apart (steps 40-160) beat 10 steps 17 apart by
    # +0.0057 mean cosine [+0.0007, +0.0107] and one-shot R=4 + recovery by +0.0054 [+0.0009, +0.0099]
    # (minilm-gradual-90-ue40-seeds-2026-11-30.txt). gradual_prune keeps 10 steps: on the digits MLP
    # 4 steps 100 apart lost 2.3 points at 98% (digits-gradual-only-reltensor-pe04-ue100-seeds345-2026-11-30.txt)
    ap.add_argument("--update-every", type=int, default=40,
                    help="steps between pruning steps (default 40: 4 pruning steps, at 40-160 of 400; "
                         "0: gradual_prune's default, 10 pruning steps)")
    ap.add_argument("--num-grads", type=int, default=256, help="m per step of one-shot oBERT (4 steps)")
    ap.add_argument("--prune-end", type=float, default=PRUNE_END_FRACTION,
                    help="gradual runs reach the target at this fraction of --steps; the rest recovers with masks fixed")
    ap.add_argument("--init-sparsity", type=float, default=0.0,
                    help="gradual runs (GMP too): the cubic schedule starts at this sparsity, pruned at the first pruning step")
    ap.add_argument("--max-tensor-sparsity", type=float, default=None,
                    help="oBERT runs: no tensor pruned above this fraction (FisherPruner's cap; default: none)")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4, help="sentences per Fisher gradient")
    ap.add_argument("--damp", default=GRADUAL_DAMP, help="default: what prune --gradual uses (%(default)s)")
    ap.add_argument("--eval", type=int, default=1500)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense fine-tune (the cost baseline)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--label", default="", help="appended to the machine line, e.g. 'loaded machine'")
    ap.add_argument("--merge", type=Path, nargs="+", help="render one table from these earlier runs' .json (same protocol; "
                    "e.g. one sparsity each, run by separate processes) instead of running anything")
    ap.add_argument("--plot", type=Path, help="also write a PNG of held-out mean cosine and NN agreement vs sparsity")
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/minilm-gradual-{date.today()}"))
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = merge_reports(args.merge) if args.merge else run_table(args)
    command = f"python examples/minilm_gradual_table.py {shlex.join(argv if argv is not None else sys.argv[1:])}"
    write_report(report, command, args.out)
    if args.plot:
        title = f"{report['header'].split(',')[0]}: gradual pruning, {report['args']['steps']} distillation steps per method"
        try:
            print(f"plot: {plot_sparsity(report['rows'], report['dense'], args.plot, title)}", file=sys.stderr)
        except ImportError as exc:
            print(f"no plot written ({exc}); the table was written", file=sys.stderr)
    return report


def run_table(args) -> dict:
    """Run every method at every sparsity (and the dense fine-tune unless --no-dense); the report write_report renders."""
    load_start, wall = os.getloadavg(), time.perf_counter()
    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=args.max_length)
    sentences = stdlib_sentences()
    held_out, train_text = split_sentences(sentences, [args.eval, len(sentences) - args.eval], seed=args.seed)
    dense_model = encoder.model
    for p in dense_model.parameters():  # the teacher: frozen, and the students are deep copies of it
        p.requires_grad_(False)
    dense_emb = encoder.encode(held_out)
    rows = [run_one(m, s, encoder, dense_model, dense_emb, held_out, train_text, args) for s in args.sparsities for m in args.methods]
    dense_row = None if args.no_dense else run_one(DENSE, 0.0, encoder, dense_model, dense_emb, held_out, train_text, args)
    load_end = os.getloadavg()
    head = (f"all-MiniLM-L6-v2, 36 encoder Linear weights, global threshold; {args.steps} AdamW steps (lr {args.lr}, linear decay) "
            f"of 1 − cos embedding distillation from the dense model, {args.train_batch_size} sentences a step, word embeddings "
            f"frozen; Gauss-Newton Fisher, {args.batch_size} sentences a gradient, B={args.block_size}, damp {args.damp}: gradual "
            f"m={args.gradual_grads} at each pruning step (every {args.update_every or 'span/9'} steps) over the first {fraction_text(args.prune_end)}, one-shot m={args.num_grads} × R=4; "
            f"{len(train_text)} training / {len(held_out)} held-out stdlib sentences (Python {platform.python_version()}), "
            f"max {args.max_length} tokens, seed {args.seed}"
            + ("" if args.max_tensor_sparsity is None else f"; oBERT capped at {args.max_tensor_sparsity:g} per tensor")
            + ("" if not args.init_sparsity else f"; gradual schedules start at {args.init_sparsity:g}"))
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {date.today()}"
               + (f", {args.label}" if args.label else ""))
    machine_line = (f"{machine}; load average (1/5/15 min) at start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, "
                    f"at end {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f}; whole run {time.perf_counter() - wall:.0f} s")
    return {"header": head, "machine": machine, "machine_lines": [machine_line], "args": {k: str(v) for k, v in vars(args).items()},
            "versions": versions(), "rows": rows, "dense": dense_row}


def write_report(report: dict, command: str, out: Path) -> None:
    """Print the header, machine lines, command, table and paired intervals; write them to out.txt and the report
    (plus the command) to out.json."""
    lines = [report["header"]] + [f"machine: {m}" for m in report["machine_lines"]] + [f"command: {command}", ""]
    text = "\n".join(lines + report_lines(report["rows"], report["dense"]))
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / (out.name + ".txt")).write_text(text + "\n")
    (out.parent / (out.name + ".json")).write_text(json.dumps({**report, "command": command}, indent=1))


def load_part(path: Path) -> dict:
    """One earlier run's .json, with its machine/load/time and command lines: from the .json, or (runs written before
    --merge existed kept load and time only in the text) from the .txt beside it, else the bare machine line."""
    part = json.loads(Path(path).read_text())
    txt = Path(path).with_suffix(".txt")
    text = txt.read_text().splitlines() if txt.exists() else []
    if "machine_lines" not in part:
        part["machine_lines"] = [t[len("machine: "):] for t in text if t.startswith("machine: ")] or [part["machine"]]
    if "command" not in part:
        part["command"] = next((t[len("command: "):] for t in text if t.startswith("command: ")),
                               "command not recorded (its args are in the merged .json)")
    return part


def protocol_arg(part: dict, key: str):
    """A run's protocol argument as recorded (str), or, for runs older than the option, the value they used."""
    return part["args"].get(key, ADDED_ARGS.get(key))


def check_protocol(parts: list[dict], paths: list[Path]) -> None:
    """SystemExit naming what differs unless every part shares the protocol (PROTOCOL_ARGS and the header: model,
    sentences, Python version) and no (method, sparsity) row is in two parts."""
    first = parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        diff = [f"{k}: {protocol_arg(first, k)} in {paths[0]}, {protocol_arg(part, k)} in {path}"
                for k in PROTOCOL_ARGS if protocol_arg(first, k) != protocol_arg(part, k)]
        if not diff and part["header"] != first["header"]:
            diff = [f"header of {paths[0]}: {first['header']}", f"header of {path}: {part['header']}"]
        if diff:
            raise SystemExit("--merge: the runs used different protocols, not merged:\n  " + "\n  ".join(diff))
    seen = {}
    for path, part in zip(paths, parts):
        for r in part["rows"]:
            key = (r["method"], r["sparsity"])
            if key in seen:
                raise SystemExit(f"--merge: {r['method']} at {r['sparsity']:.0%} is in both {seen[key]} and {path}")
            seen[key] = path


def merge_reports(paths: list[Path]) -> dict:
    """One report from earlier runs (rows ordered by sparsity, each part's order kept within one); the first dense
    fine-tune row found is the cost baseline. Records the files and each part's machine, load, time and command."""
    parts = [load_part(p) for p in paths]
    check_protocol(parts, paths)
    dense = next((p["dense"] for p in parts if p.get("dense")), None)
    return {"header": parts[0]["header"], "merged_from": [str(p) for p in paths],
            "machine_lines": [f"{m} [{path}: {part['command']}]" for path, part in zip(paths, parts) for m in part["machine_lines"]],
            "parts": [{"file": str(path), **{k: part.get(k) for k in ("machine", "machine_lines", "command", "args", "versions")}}
                      for path, part in zip(paths, parts)],
            "args": {k: protocol_arg(parts[0], k) for k in PROTOCOL_ARGS}, "versions": parts[0].get("versions"),
            "rows": sorted((r for p in parts for r in p["rows"]), key=lambda r: r["sparsity"]), "dense": dense}


PLOT_STYLE = {GRADUAL: ("o-", "C0"), GMP: ("s--", "C1"), ONESHOT: ("^-.", "C2")}  # fixed: the same colour in every figure


def plot_panel(ax, rows: list[dict], dense_row, key: str, ylabel: str) -> None:
    """One metric vs measured sparsity (%), a line per method; dense (1.0) and the dense fine-tune as reference lines."""
    for method in [m for m in PLOT_STYLE if any(r["method"] == m for r in rows)] + \
            sorted({r["method"] for r in rows} - set(PLOT_STYLE)):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["measured_sparsity"])
        fmt, color = PLOT_STYLE.get(method, ("x:", None))
        ax.plot([100 * r["measured_sparsity"] for r in mine], [r[key] for r in mine], fmt, color=color, label=method)
    ax.axhline(1.0, color="gray", lw=0.8, ls=":", label="dense (reference)")
    if dense_row:
        ax.axhline(dense_row[key], color="gray", lw=0.8, ls="-.", label=DENSE)
    ax.set_xticks(sorted({round(100 * r["measured_sparsity"], 1) for r in rows}))
    ax.set(xlabel="sparsity (%, measured)", ylabel=ylabel, ylim=(0, 1.05))
    ax.grid(alpha=0.3)


def plot_sparsity(rows: list[dict], dense_row, path, title: str) -> Path:
    """PNG of held-out mean cosine (left) and nearest-neighbour agreement (right) with the dense model vs sparsity;
    written whole or not at all (obert_kernels.app.demo.save_png).

    rows: the report's rows (method, measured_sparsity, mean_cosine, nn_agreement). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    plot_panel(axes[0], rows, dense_row, "mean_cosine", "held-out mean cosine with dense")
    plot_panel(axes[1], rows, dense_row, "nn_agreement", "nearest-neighbour agreement with dense")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


if __name__ == "__main__":
    main()
