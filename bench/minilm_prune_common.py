"""What the MiniLM prune-step benchmarks share (bench_auto_damp_cpu.py, bench_storage_cpu.py):
the packaged model, the common flags, and running a script's measurement to its results files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_model(max_length: int):
    """all-MiniLM-L6-v2 (the packaged copy) and its 36 encoder Linear weights (name -> tensor)."""
    from obert_kernels.integrations.hf_models import encoder_weights, load_sentence_encoder

    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=max_length)
    return encoder, dict(encoder_weights(encoder.model))


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The gradients' and the prune step's flags (m, sentences per gradient, B, k, S, rounds, seed)."""
    ap.add_argument("--num-grads", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4, help="sentences per gradient")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")


def run_and_save(script: str, args, run, report_text, argv=None) -> dict:
    """res = run(args); prints report_text(res, command) and, unless --no-save, writes it to
    ``args.out``.txt and res (with the command) to ``args.out``.json."""
    res = run(args)
    command = f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report_text(res, command)
    print(text, end="")
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(res | {"command": command}, indent=1))
        Path(f"{args.out}.txt").write_text(text)
    return res
