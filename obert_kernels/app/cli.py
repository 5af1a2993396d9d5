"""Command line: ``python -m obert_kernels {check,demo,prune,bench,info}`` (also the ``obert-kernels`` script).

    obert-kernels check [--interpret] [--quick] [--json PATH]   # every op × backend × device vs float64: run first

    obert-kernels demo                          # digits MLP: oBERT vs magnitude table + PNG (minutes on 2 cores)
    obert-kernels prune all-MiniLM-L6-v2 --sparsity 0.7 --out minilm-70
    obert-kernels prune ./my-bert-dir --sparsity 0.5 --method joint --damp rel:0.01 --out pruned
    obert-kernels prune digits-mlp --sparsity 0.9 --out mlp-90
    obert-kernels prune all-MiniLM-L6-v2 --sparsity 0.8 --gradual --train-steps 400 --out minilm-80   # + distillation
    obert-kernels bench [--list] [--quick] [NAME ...] [-- script args]
    obert-kernels info [--d 10616832 --block-size 50]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..specs import PRUNE_END_FRACTION
from .options import BenchOptions, CheckOptions, DemoOptions, InfoOptions, PruneOptions

__all__ = ["main", "build_parser", "add_demo_arguments"]


def _add_pruner_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("pruner (see FisherPruner)")
    g.add_argument("--sparsity", type=float, required=True, help="target sparsity in [0, 1) (ignored for N:M)")
    g.add_argument("--method", choices=["obs", "joint", "sequential", "magnitude"], default="obs",
                   help="oBERT with the summed ('obs') or exact joint update, sequential OBS (greedy removal "
                        "order per block, SPEC §2d), or magnitude pruning")
    g.add_argument("--damp", default=None,
                   help="'auto' (λ chosen by the prune step's loss increase on held-out gradients), "
                        "'rel:α[:tensor|block|global]' (α × mean Fisher diagonal; one λ for all tensors under a "
                        "global threshold) or an absolute λ (default: auto; with --gradual rel:0.01:tensor)")
    g.add_argument("--block-size", type=int, default=50, help="B, weights per Fisher block (default: %(default)s)")
    g.add_argument("--num-grads", type=int, default=256, help="m, gradients per Fisher (default: %(default)s)")
    g.add_argument("--chunk-size", type=int, default=32, help="k, gradients buffered per update (default: %(default)s)")
    g.add_argument("--num-recomputations", type=int, default=1, help="R, prune steps each with a fresh Fisher")
    g.add_argument("--pattern", default="unstructured", help="'unstructured', 'block4' or 'N:M' such as '2:4'")
    g.add_argument("--per-tensor", action="store_true", help="sparsity per tensor instead of one global threshold")
    g.add_argument("--max-tensor-sparsity", type=float, default=None,
                   help="global threshold: prune no tensor above this fraction (its slots go to the others)")
    g.add_argument("--fisher-method", choices=["auto", "direct", "woodbury"], default="auto")
    g.add_argument("--fisher-storage", choices=["auto", "dense", "packed"], default="auto",
                   help="F's blocks whole, or their upper triangles (about half the memory, the same pruned weights); "
                        "auto: packed where the build reads it natively (the cpp backend on a CPU), else dense "
                        "(default: %(default)s)")
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


def add_demo_arguments(ap: argparse.ArgumentParser) -> None:
    """``demo``'s flags (also ``python -m obert_kernels.app.demo``'s): here, not in demo.py, which imports torch."""
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--update", choices=["obs", "joint", "sequential", "none"], default="obs")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--num-grads", type=int, default=128)
    ap.add_argument("--damp", default="1e-6",
                    help="'auto' (chosen on held-out gradients), 'rel:α[:block]' (α × mean Fisher diagonal) "
                         "or an absolute λ, as for prune (default: %(default)s)")
    ap.add_argument("--num-recomputations", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=Path("obert-demo.png"), help="PNG of accuracy vs sparsity (default: %(default)s)")
    ap.add_argument("--no-plot", action="store_true", help="print the table only")
    ap.add_argument("--no-progress", action="store_true")


def add_gradual_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags of ``prune --gradual`` (a group of their own; the pruner and data flags are prune's): here,
    not in gradual_command.py, which imports torch."""
    g = ap.add_argument_group("gradual pruning with distillation (--gradual)")
    g.add_argument("--gradual", action="store_true", help="prune gradually while fine-tuning with distillation from the dense model")
    g.add_argument("--train-steps", type=int, default=600, help="optimizer steps in all (default: %(default)s)")
    g.add_argument("--prune-end", type=float, default=PRUNE_END_FRACTION, help="last pruning step as a fraction of the steps; the rest "
                   "recovers with masks fixed (default: %(default)s)")
    g.add_argument("--update-every", type=int, help="steps between pruning steps (default: 10 pruning steps)")
    g.add_argument("--init-sparsity", type=float, default=0.0, help="the cubic schedule's start (default: %(default)s)")
    g.add_argument("--lr", type=float, help="AdamW learning rate, linear warm-up then linear decay to 0 "
                   "(default: 1e-3 digits-mlp, 1e-4 encoders)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-steps", type=int, default=0)
    g.add_argument("--train-batch-size", type=int, help="examples per training step (default: 64 digits-mlp, 8 encoders)")
    g.add_argument("--hardness", type=float, default=1.0, help="h of (1 − h)·task + h·T²·KL (digits-mlp)")
    g.add_argument("--temperature", type=float, default=2.0, help="T of the KL term (digits-mlp)")
    g.add_argument("--distill-loss", choices=["cosine", "mse"], default="cosine", help="encoders: loss between embeddings")
    g.add_argument("--fisher-from", choices=["probe", "train"], default="probe",
                   help="'probe': fresh gradients at each pruning step (Gauss-Newton probe for encoders, "
                        "cross-entropy for digits-mlp); 'train': the training loop's own gradients")
    g.add_argument("--teacher", help="encoders: a model directory to distil from (default: the dense model itself)")


def build_parser() -> argparse.ArgumentParser:
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
    add_demo_arguments(p)

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
    d.add_argument("--fisher-labels", choices=["true", "sampled"], default="true",
                   help="digits-mlp: the Fisher's labels, the data's ('true': empirical Fisher) or drawn from "
                        "the model's softmax ('sampled')")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    add_gradual_arguments(p)

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


def busy_machine_hint() -> str | None:
    """One line when the 1-minute load average is above the core count while torch runs
    several threads: torch's threads then wait on each other (on 2 cores with one other busy
    process the demo and the MiniLM prune ran 15-30× slower; OMP_NUM_THREADS=1 brought them
    back, README "Troubleshooting"). None otherwise, or where the load is unknown."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    import torch

    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    if load <= cores or threads == 1:
        return None
    return (f"obert-kernels: the load average ({load:.1f}) is above this machine's {cores} cores and torch runs "
            f"{threads} threads; if this is slow, run it with OMP_NUM_THREADS=1 (README: Troubleshooting)")


def _print_hint() -> None:
    """busy_machine_hint() on stderr, if any: after the options are checked (it imports torch)."""
    hint = busy_machine_hint()
    if hint:
        print(hint, file=sys.stderr)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    """Build the subcommand's options once (checked) and run it; the namespace goes no further."""
    # each command's options are checked before its module (which imports torch) is imported
    if args.command == "check":
        options = CheckOptions.from_args(args)
        _print_hint()
        from .check import run_check_command

        return run_check_command(options)
    if args.command == "demo":
        options = DemoOptions.from_args(args)
        _print_hint()
        from .demo import run_demo_command

        run_demo_command(options)
        return 0
    if args.command == "prune" and args.gradual:
        from .gradual_command import GradualOptions, run_gradual

        run_gradual(GradualOptions.from_args(args))
        return 0
    if args.command == "prune":
        options = PruneOptions.from_args(args)
        _print_hint()
        from .prune_command import run_prune

        run_prune(options)
        return 0
    if args.command == "bench":
        options = BenchOptions.from_args(args, extra)
        _print_hint()
        return _bench(options)
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

        d = [w.numel() for _, w in encoder_weights(load_sentence_encoder(options.model).model)]  # one size per tensor
    print(info_text(d, options.block_size, options.chunk_size, options.device))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
