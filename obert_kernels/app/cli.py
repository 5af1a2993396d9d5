"""Command line: ``python -m obert_kernels {check,demo,prune,bench,info}`` (also the ``obert-kernels`` script).

    obert-kernels check [--interpret] [--quick] [--json PATH]   # every op × backend × device vs float64: run first

    obert-kernels demo                          # digits MLP: oBERT vs magnitude table + PNG (minutes on 2 cores)
    obert-kernels prune all-MiniLM-L6-v2 --sparsity 0.7 --out minilm-70
    obert-kernels prune ./my-bert-dir --sparsity 0.5 --method joint --damp rel:0.01 --out pruned
    obert-kernels prune digits-mlp --sparsity 0.9 --out mlp-90
    obert-kernels prune all-MiniLM-L6-v2 --sparsity 0.8 --gradual --train-steps 400 --damp rel:0.01 --out minilm-80   # + distillation
    obert-kernels bench [--list] [--quick] [NAME ...] [-- script args]
    obert-kernels info [--d 10616832 --block-size 50]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import BenchOptions, CheckOptions, DemoOptions, InfoOptions, PruneOptions

__all__ = ["main", "build_parser"]


def _add_pruner_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("pruner (see FisherPruner)")
    g.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1) (ignored for N:M)")
    g.add_argument("--method", choices=["obs", "joint", "sequential", "magnitude"], default="obs",
                   help="oBERT with the summed ('obs') or exact joint update, sequential OBS (greedy removal "
                        "order per block, SPEC §2d), or magnitude pruning")
    g.add_argument("--damp", default="auto",
                   help="'auto' (chosen on held-out gradients), 'rel:α[:block]' (α × mean Fisher diagonal) "
                        "or an absolute λ (default: %(default)s)")
    g.add_argument("--block-size", type=int, default=50, help="B, weights per Fisher block (default: %(default)s)")
    g.add_argument("--num-grads", type=int, default=256, help="m, gradients per Fisher (default: %(default)s)")
    g.add_argument("--chunk-size", type=int, default=32, help="k, gradients buffered per update (default: %(default)s)")
    g.add_argument("--num-recomputations", type=int, default=1, help="R, prune steps each with a fresh Fisher")
    g.add_argument("--pattern", default="unstructured", help="'unstructured', 'block4' or 'N:M' such as '2:4'")
    g.add_argument("--per-tensor", action="store_true", help="sparsity per tensor instead of one global threshold")
    g.add_argument("--fisher-method", choices=["auto", "direct", "woodbury"], default="auto")
    g.add_argument("--backend", default="auto", help="auto, torch, triton or cuda")


def _add_check_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="one pattern (2:4) for scores and updates instead of three")
    ap.add_argument("--device", action="append", help="check only this device (repeatable; default: cpu and every CUDA device)")
    ap.add_argument("--backend", action="append", help="check only this backend (repeatable; default: torch, triton, cuda)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="what the ops compute in (default: %(default)s; the Triton and CUDA kernels are float32 only)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the table as JSON")
    ap.add_argument("--interpret", action="store_true",
                    help="run again with TRITON_INTERPRET=1: the Triton kernels through Triton's CPU interpreter (slow)")


def build_parser() -> argparse.ArgumentParser:
    from . import demo, gradual_command

    ap = argparse.ArgumentParser(prog="obert-kernels", description="Second-order (Optimal BERT Surgeon) pruning")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="every op on every backend and device here against the float64 reference: run this first",
                       description="Run every kernel op (Fisher inverse by Woodbury and by the direct path, scores for each "
                                   "pattern with and without factors, the update obs/joint/none, obs_apply) on every backend "
                                   "and device present, with dense and packed F⁻¹, against the float64 references on small "
                                   "awkward shapes. Prints one line per op × device × storage × backend; exits 1 on any "
                                   "mismatch (a backend that cannot run here is not a failure).")
    _add_check_options(p)

    p = sub.add_parser("demo", help="one-shot prune an MLP on scikit-learn's digits: table + PNG plot")
    demo.add_arguments(p)

    p = sub.add_parser("prune", help="one-shot prune a model directory or a built-in; write safetensors",
                       description="One-shot prune the encoder Linear weights of a Hugging Face BERT-family model "
                                   "(a directory, or the built-in all-MiniLM-L6-v2) with the label-free Gauss-Newton "
                                   "Fisher on sentences from the Python standard library's docstrings, or the built-in "
                                   "digits-mlp with its cross-entropy Fisher. Writes OUT/ only when the run completes.")
    p.add_argument("model", help="a model directory, 'all-MiniLM-L6-v2' or 'digits-mlp'")
    p.add_argument("--out", type=Path, required=True, help="output directory (written only when the run completes)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (at the end)")
    _add_pruner_options(p)
    d = p.add_argument_group("data")
    d.add_argument("--batch-size", type=int, default=4, help="sentences per gradient sample (default: %(default)s)")
    d.add_argument("--texts", type=Path, help="a text file, one sentence per line, for the Fisher (default: stdlib docstrings)")
    d.add_argument("--eval-sentences", type=int, default=500, help="held-out sentences for the agreement check")
    d.add_argument("--max-length", type=int, default=128, help="tokens per sentence")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    gradual_command.add_arguments(p)

    p = sub.add_parser("bench", help="run the benchmark scripts (bench/bench_*.py) the backends present can run")
    p.add_argument("names", nargs="*", help="scripts to run (default: all that can run here)")
    p.add_argument("--list", action="store_true", help="list the scripts and what each needs")
    p.add_argument("--quick", action="store_true", help="short runs (each script's QUICK_ARGS)")
    p.add_argument("--bench-dir", type=Path, help="default: the checkout's bench/ (or $OBERT_BENCH_DIR)")

    p = sub.add_parser("info", help="versions, devices, backends (and why not), memory estimate")
    p.add_argument("--d", type=int, help="prunable weights, for a memory estimate")
    p.add_argument("--model", help="estimate for a model directory / built-in's encoder weights instead of --d")
    p.add_argument("--block-size", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--device", help="device for the estimate (default: the last one listed)")
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:  # bench: everything after -- goes to the scripts
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    try:
        return _run(args, extra)
    except (FileExistsError, FileNotFoundError, ImportError, ValueError) as exc:
        print(f"obert-kernels {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    """Build the subcommand's options once (checked) and run it; the namespace goes no further."""
    if args.command == "check":
        from .check import run_check_command

        return run_check_command(CheckOptions.from_args(args))
    if args.command == "demo":
        from .demo import run_demo_command

        run_demo_command(DemoOptions.from_args(args))
        return 0
    if args.command == "prune" and args.gradual:
        from .gradual_command import GradualOptions, run_gradual

        run_gradual(GradualOptions.from_args(args))
        return 0
    if args.command == "prune":
        from .prune_command import run_prune

        run_prune(PruneOptions.from_args(args))
        return 0
    if args.command == "bench":
        return _bench(BenchOptions.from_args(args, extra))
    if args.command == "info":
        return _info(InfoOptions.from_args(args))
    raise AssertionError(args.command)  # pragma: no cover


def _bench(options: BenchOptions) -> int:
    from .bench_runner import discover, run_scripts

    scripts = discover(options.bench_dir, list(options.names) or None)
    if options.list_only:
        for s in scripts:
            state = "runs here" if s.runnable else "skipped: " + "; ".join(s.missing)
            quick = "" if s.quick_args is None else f"; --quick: {' '.join(s.quick_args)}"
            print(f"{s.name:<28} needs {', '.join(s.requires) or 'nothing'} ({state}{quick})")
        return 0
    return 1 if run_scripts(scripts, quick=options.quick, extra_args=list(options.extra_args)) else 0


def _info(options: InfoOptions) -> int:
    from .info import info_text

    d = options.d
    if options.model:
        from ..integrations.hf_models import encoder_weights, load_sentence_encoder

        d = sum(w.numel() for _, w in encoder_weights(load_sentence_encoder(options.model).model))
    print(info_text(d, options.block_size, options.chunk_size, options.device))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
