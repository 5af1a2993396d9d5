"""Where the host time of one prune step goes: cProfile over add_grads() and prune().

bench_prune_gpu.py measured (H200, 2026-11-30, MiniLM shapes, m = 256) add_grads at 0.74-0.93 s
of which the Fisher kernels were 0.03-0.18 s, and "prune other" (all of prune() but scoring,
update and inversion) at 1.4-1.6 s against 0.01 s of scoring: this script says which Python
functions hold that time. Run it twice on a GPU: as is (host time lands on the call that waits
for the device) and with CUDA_LAUNCH_BLOCKING=1 (each kernel's time lands on the call that
launched it).

    python bench/profile_prune_gpu.py --config woodbury:dense:triton --out bench/results/x
    python bench/profile_prune_gpu.py --dry-run --out /tmp/x        # CPU, tiny shapes

Writes <out>/profile-<config>[-blocking].txt: the 40 costliest functions by own time and by
cumulative time, for add_grads and for prune separately.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout, for obert_kernels
import bench_prune_gpu as bp  # noqa: E402  (the same shapes, inputs and pruner set-up)

TOP = 40


def stats_text(profile: cProfile.Profile, title: str, seconds: float) -> str:
    """The TOP functions by own time, then by cumulative time."""
    out = [f"## {title}: {seconds:.3f} s wall", ""]
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profile, stream=buf).strip_dirs().sort_stats(key).print_stats(TOP)
        out += [f"### by {key}", buf.getvalue()]
    return "\n".join(out)


def profiled(fn, device) -> tuple[cProfile.Profile, float]:
    """Run fn under cProfile, synchronized on both sides; (profile, wall seconds)."""
    bp.sync(device)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    fn()
    bp.sync(device)
    prof.disable()
    return prof, time.perf_counter() - start


def profile_config(ok, weights, grads, text: str, args, device) -> str:
    """Warm up (compiles), then profile add_grads × m and prune once."""
    cfg = bp.parse_config(text)
    bp.run_prune(ok, weights, grads, cfg, args, args.chunk, device)  # warm-up
    _, pruner = bp.make_pruner(ok, weights, cfg, args, args.num_grads)
    samples = itertools.cycle(grads)
    add_prof, add_s = profiled(lambda: [pruner.add_grads(next(samples)) for _ in range(args.num_grads)], device)
    prune_prof, prune_s = profiled(lambda: pruner.prune(args.sparsity), device)
    blocking = os.environ.get("CUDA_LAUNCH_BLOCKING") == "1"
    head = (f"# {text} on {device}, m = {args.num_grads}, k = {args.chunk}, B = {args.block_size}, "
            f"CUDA_LAUNCH_BLOCKING={'1' if blocking else 'unset'}\n")
    return "\n".join([head, stats_text(add_prof, f"add_grads × {args.num_grads}", add_s),
                      stats_text(prune_prof, "prune", prune_s)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="woodbury:dense:triton", help="method:storage:backend (comma-separated: several)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter")
    own, rest = ap.parse_known_args(argv)
    args = bp.parse_args(rest + (["--dry-run"] if own.dry_run else []))
    if own.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    import obert_kernels as ok

    device = "cpu" if own.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --dry-run on the CPU)")
    shapes = bp.minilm_shapes(2, 24, 96) if own.dry_run else bp.minilm_shapes()
    weights, grads = bp.make_inputs(shapes, args.pool, device, args.seed)
    own.out.mkdir(parents=True, exist_ok=True)
    suffix = "-blocking" if os.environ.get("CUDA_LAUNCH_BLOCKING") == "1" else ""
    for text in own.config.split(","):
        report = profile_config(ok, weights, grads, text.strip(), args, device)
        path = own.out / f"profile-{text.strip().replace(':', '-')}{suffix}.txt"
        path.write_text(report)
        print(report[:4000], f"\nwrote {path}", flush=True)


if __name__ == "__main__":
    main()
