"""Damping policies on all-MiniLM-L6-v2, oBERT obs, one step (issue 12), with paired intervals.

The protocol of examples/minilm_prune_table.py (B = 32, m = 256 Gauss-Newton gradients of 4
sentences, k = 32, 1500 held-out sentences, max 64 tokens, seed 0; its ``run_one``): each
damp at each sparsity, then every policy against ``--baseline`` (default: the auto before
issue 12, "auto:tensor:likelihood") with a 95% interval of the difference, paired over the
held-out sentences.

    OMP_NUM_THREADS=1 python examples/damping_minilm.py --sparsities 0.7 0.8 \\
        --damps auto:tensor:likelihood auto rel:1e-2:global --out bench/results/damping-minilm-2026-11-30
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_prune_table import paired_interval, run_one  # noqa: E402
from obert_kernels.app.text import split_sentences, stdlib_sentences  # noqa: E402
from obert_kernels.integrations.hf_models import load_sentence_encoder  # noqa: E402


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.8])
    ap.add_argument("--damps", nargs="+", default=["auto:tensor:likelihood", "auto", "rel:1e-2:global"])
    ap.add_argument("--baseline", default="auto:tensor:likelihood")
    ap.add_argument("--baseline-json", type=Path, help="take the baseline rows (obs, R=1, damp 'auto') from this results "
                    "file of examples/minilm_prune_table.py (the same protocol) instead of running them")
    ap.add_argument("--num-grads", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval", type=int, default=1500)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/damping-minilm-{date.today()}"))
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=args.max_length)
    held_out, fisher_text = split_sentences(stdlib_sentences(), [args.eval, len(stdlib_sentences()) - args.eval], seed=args.seed)
    dense_emb = encoder.encode(held_out)
    rows = []
    if args.baseline_json:
        stored = json.loads(args.baseline_json.read_text())["rows"]
        rows += [{**r, "damp": args.baseline, "stored": str(args.baseline_json)} for r in stored
                 if r["method"] == "obs" and r["recomputations"] == 1 and r["damp"] == "auto" and r["sparsity"] in args.sparsities]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for s in args.sparsities:
        for damp in args.damps:
            rows.append(run_one(encoder, encoder.model, dense_emb, held_out, fisher_text, args, "obs", s, 1, damp))
            with args.out.with_suffix(".partial.jsonl").open("a") as f:  # a row survives a stopped run
                f.write(json.dumps(rows[-1]) + "\n")
    lines = [f"all-MiniLM-L6-v2, oBERT obs R=1, B={args.block_size}, m={args.num_grads}, k={args.chunk_size}, "
             f"{args.eval} held-out sentences; load average at start {load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f} "
             "(times measured on a loaded machine)",
             f"command: python examples/damping_minilm.py {' '.join(argv if argv is not None else sys.argv[1:])}", "",
             "| sparsity | damp | chosen | mean cosine | NN agreement | vs baseline: cos diff 95% | NN diff 95% | prune s |",
             "| ---: | --- | --- | ---: | ---: | --- | --- | ---: |"]
    for r in rows:
        base = next((b for b in rows if b["sparsity"] == r["sparsity"] and b["damp"] == args.baseline), None)
        cells = ["", ""]
        if base is not None and base is not r:
            cells = [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in (paired_interval(r, base, k) for k in ("mean_cosine", "nn_agreement"))]
        lines.append(f"| {r['sparsity']:.0%} | {r['damp']} | {r['chosen_damp']} | {r['mean_cosine']:.4f} | "
                     f"{r['nn_agreement']:.3f} | {cells[0]} | {cells[1]} | {r['prune_s']:.0f} |")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
