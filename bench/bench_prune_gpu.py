"""One end-to-end prune step at all-MiniLM-L6-v2 size on a GPU, with the time of each phase.

The model itself is not needed (nor installed on our GPU image): FisherPruner runs over
random weights of MiniLM's 36 encoder Linear shapes (6 layers × Q, K, V, attention output
384×384, intermediate 1536×384, output 384×1536: 10,616,832 weights) and random gradients
drawn before any clock starts (a pool of distinct samples, cycled). Per configuration
(Fisher method : storage : backend) a warm-up prune with m = k gradients compiles every
kernel first; then one timed prune step with m gradients:

  add_grads   the m add_grads() calls (their Fisher updates included: woodbury_update or
              fisher_accumulate, also reported alone as "fisher kernels")
  inversion   fisher_invert (the direct path; Woodbury builds F⁻¹ directly, so none)
  scoring     obs_scores
  update      obs_update
  prune other the rest of prune(): selection, masks, copying weights back

Phases inside prune() are timed by wrapping ``obert_kernels.ops`` functions (the pruner
calls them through that module) with a device synchronization on both sides; a phase with
no intercepted call says so instead of reporting 0 s. Device time: torch.cuda.synchronize
around host clocks (events would miss the host work the pruner does between kernels).

Also measured: the device memory of F⁻¹ at d = 8.5·10⁷, B = 50, dense vs packed
(torch.cuda.memory_allocated before and after init_finv / init_finv_packed), for the
"packed ≤ 55% of dense" target, and each configuration's Fisher state (F⁻¹ + the k-gradient
buffer) as allocated by the pruner.

    python bench/bench_prune_gpu.py --out bench/results/
    python bench/bench_prune_gpu.py --configs woodbury:dense:cuda,direct:dense:triton
    python bench/bench_prune_gpu.py --dry-run --out /tmp/x        # CPU, tiny shapes, Triton interpreter

Writes <out>/prune-gpu-<date>.json and .md (prune-dryrun-cpu-<date>.* for --dry-run).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRES = ("cuda-device",)
QUICK_ARGS = ["--configs", "woodbury:dense:auto,woodbury:packed:auto"]
DEFAULT_CONFIGS = ("woodbury:dense:auto,woodbury:packed:auto,direct:dense:auto,"
                   "woodbury:dense:triton,woodbury:dense:cuda,woodbury:packed:cuda")
# the ops whose time makes each phase inside the pruner
PHASE_OPS = {"woodbury_update": "fisher kernels", "fisher_accumulate": "fisher kernels",
             "fisher_invert": "inversion", "obs_scores": "scoring", "obs_update": "update"}


def minilm_shapes(layers: int = 6, hidden: int = 384, inter: int = 1536) -> list[tuple[str, tuple[int, int]]]:
    """all-MiniLM-L6-v2's encoder Linear weights (name, (out, in)): 6 per layer."""
    out = []
    for i in range(layers):
        p = f"encoder.layer.{i}."
        out += [(p + n, (hidden, hidden)) for n in ("attention.self.query", "attention.self.key",
                                                     "attention.self.value", "attention.output.dense")]
        out += [(p + "intermediate.dense", (inter, hidden)), (p + "output.dense", (hidden, inter))]
    return out


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Times every call of the ops in PHASE_OPS made through ``obert_kernels.ops`` while active.

    Each wrapped call is bracketed by device synchronizations, so its seconds are the device
    time of that call (plus launch overhead); calls counts how many were intercepted."""

    def __init__(self, ops, device):
        self.ops, self.device = ops, device
        self.seconds = {p: 0.0 for p in PHASE_OPS.values()}
        self.calls = {p: 0 for p in PHASE_OPS.values()}
        self._saved = {}
        self._depth = 0  # ops may call ops (packed storage goes tile by tile): only the outermost call counts

    def _wrap(self, name, fn):
        phase = PHASE_OPS[name]

        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            sync(self.device)
            start = time.perf_counter()
            self._depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self._depth -= 1
            sync(self.device)
            self.seconds[phase] += time.perf_counter() - start
            self.calls[phase] += 1
            return out

        return timed

    def __enter__(self):
        for name in PHASE_OPS:
            self._saved[name] = getattr(self.ops, name)
            setattr(self.ops, name, self._wrap(name, self._saved[name]))
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(self.ops, name, fn)


def make_inputs(shapes, pool: int, device, seed: int, scale: float = 1e-3):
    """Weights (name -> tensor) and ``pool`` gradient samples (lists in the same order):
    per-coordinate log-normal scales and a shared rank-2 part, never zeros."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    weights = {n: torch.randn(s, generator=gen, device=device) * 0.05 for n, s in shapes}
    cols = {n: torch.exp(0.5 * torch.randn(s, generator=gen, device=device)) for n, s in shapes}
    grads = []
    for _ in range(pool):
        mix = torch.randn(2, generator=gen, device=device)
        sample = []
        for n, s in shapes:
            low = torch.randn(2, *s, generator=gen, device=device)
            g = torch.randn(s, generator=gen, device=device) + 0.5 * (mix[:, None, None] * low).sum(0)
            sample.append(g * cols[n] * scale)
        grads.append(sample)
    return weights, grads


def parse_config(text: str) -> dict:
    """'method:storage:backend' -> the config dict every run records."""
    method, storage, backend = text.split(":")
    return {"config": text, "method": method, "storage": storage, "backend": backend}


def make_pruner(ok, weights, cfg: dict, args, num_grads: int):
    """(fresh copies of ``weights``, a FisherPruner over them) for one configuration."""
    params = {n: w.clone() for n, w in weights.items()}
    pruner = ok.FisherPruner(params, block_size=args.block_size, num_grads=num_grads, damp=args.damp,
                             chunk_size=args.chunk, fisher_method=cfg["method"], fisher_storage=cfg["storage"],
                             backend=cfg["backend"], verbose=False)
    return params, pruner


def run_prune(ok, weights, grads, cfg: dict, args, num_grads: int, device) -> dict:
    """One prune step over fresh copies of ``weights``; phase times and memory."""
    import torch

    cuda = torch.device(device).type == "cuda"
    params, pruner = make_pruner(ok, weights, cfg, args, num_grads)
    sync(device)
    before = torch.cuda.memory_allocated(device) if cuda else None
    samples = itertools.cycle(grads)
    with PhaseClock(ok.ops, device) as clock:
        start = time.perf_counter()
        pruner.add_grads(next(samples))
        state_bytes = torch.cuda.memory_allocated(device) - before if cuda else None  # F⁻¹ + buffer, now allocated
        for _ in range(num_grads - 1):
            pruner.add_grads(next(samples))
        sync(device)
        add_s = time.perf_counter() - start
        in_add = dict(clock.seconds), dict(clock.calls)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        report = pruner.prune(args.sparsity)
        sync(device)
        prune_s = time.perf_counter() - start
    return phase_record(clock, in_add, add_s, prune_s, state_bytes, pruner, params, report, cuda, device)


def phase_record(clock, in_add, add_s, prune_s, state_bytes, pruner, params, report, cuda, device) -> dict:
    """The phases of one run as a dict; a phase no call reached is None with a reason."""
    import torch

    add_sec, add_calls = in_add
    out = {"add_grads_s": add_s, "fisher_kernels_s": add_sec["fisher kernels"],
           "fisher_kernel_calls": add_calls["fisher kernels"], "prune_s": prune_s, "phase_calls": {}}
    inside = 0.0
    for phase in ("inversion", "scoring", "update"):
        calls = clock.calls[phase] - add_calls.get(phase, 0)
        secs = clock.seconds[phase] - add_sec.get(phase, 0.0)
        out["phase_calls"][phase] = calls
        out[f"{phase}_s"] = secs if calls else None
        inside += secs
    out["prune_other_s"] = prune_s - inside
    out["fisher_state_bytes"] = state_bytes
    out["prune_peak_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None
    out["sparsity"] = pruner.sparsity
    out["finite"] = all(bool(torch.isfinite(w).all()) for w in params.values())
    out["fisher_method"] = pruner.fisher_method
    out["report_seconds"] = report.seconds
    return out


def finv_memory(ok, d: int, B: int, device) -> dict:
    """Device bytes of F⁻¹ for d weights, dense and packed, as allocated (not computed)."""
    import torch

    nb = -(-d // B)
    out = {"d": d, "B": B}
    for storage, init in (("dense", ok.ops.init_finv), ("packed", ok.ops.init_finv_packed)):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        finv = init(nb, B, 1e-7, device=device)
        out[f"{storage}_bytes"] = torch.cuda.memory_allocated(device) - before
        del finv
        torch.cuda.empty_cache()
    out["packed_over_dense"] = out["packed_bytes"] / out["dense_bytes"]
    return out


def run_config(ok, weights, grads, text: str, args, device) -> dict:
    cfg = parse_config(text)
    try:
        run_prune(ok, weights, grads, cfg, args, args.chunk, device)  # warm-up: compiles every kernel
        cfg.update(run_prune(ok, weights, grads, cfg, args, args.num_grads, device))
    except (RuntimeError, ValueError, NotImplementedError) as exc:  # e.g. a backend that cannot serve this device
        cfg["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return cfg


def fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def markdown(record: dict) -> str:
    env, a = record["environment"], record["args"]
    lines = [f"# End-to-end prune step on {env['device']} ({env['date']})", "",
             f"{a['shapes']}: {record['weights']:,} weights in {record['tensors']} tensors; B = {a['block_size']}, "
             f"m = {a['num_grads']}, k = {a['chunk']}, damp = {a['damp']:g}, sparsity {a['sparsity']}; torch "
             f"{env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, Python {env['python']}", "",
             "Seconds per phase (device-synchronized). Phases inside prune() come from wrapped ops calls; "
             "'—' = no call (e.g. no inversion on the Woodbury path).", "",
             "| config (method:storage:backend) | add_grads | fisher kernels | inversion | scoring | update | "
             "prune other | prune total | Fisher state GiB | sparsity |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["configs"]:
        if "skipped" in r:
            lines.append(f"| {r['config']} | skipped: {r['skipped']} |||||||||")
            continue
        st = r.get("fisher_state_bytes")
        lines.append(f"| {r['config']} | {fmt(r['add_grads_s'])} | {fmt(r['fisher_kernels_s'])} | {fmt(r['inversion_s'])} | "
                     f"{fmt(r['scoring_s'])} | {fmt(r['update_s'])} | {fmt(r['prune_other_s'])} | {fmt(r['prune_s'])} | "
                     f"{fmt(st and st / 2**30, '.2f')} | {r['sparsity']:.3f} |")
    mem = record.get("finv_memory")
    if mem:
        lines += ["", f"F⁻¹ device memory at d = {mem['d']:,}, B = {mem['B']}: dense {mem['dense_bytes'] / 2**30:.2f} GiB, "
                  f"packed {mem['packed_bytes'] / 2**30:.2f} GiB = {mem['packed_over_dense']:.1%} of dense (allocated)."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="method:storage:backend, comma-separated")
    ap.add_argument("--num-grads", type=int, default=256, help="m (the CLI's default)")
    ap.add_argument("--chunk", type=int, default=32, help="k, gradients per Fisher update")
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pool", type=int, default=4, help="distinct gradient samples, cycled")
    ap.add_argument("--finv-memory-d", type=int, default=85_000_000, help="d for the dense/packed F⁻¹ memory (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="results folder; JSON + markdown")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU plumbing: TRITON_INTERPRET=1, 2 layers of hidden 24 / 96, m=16, k=8, B=12")
    args = ap.parse_args(argv)
    args.shapes = "all-MiniLM-L6-v2 encoder Linear shapes"
    if args.dry_run:  # the interpreter runs Triton kernels slowly (25 s for this model): not here by default
        args.num_grads, args.chunk, args.block_size, args.pool, args.finv_memory_d = 16, 8, 12, 2, 0
        if args.configs == DEFAULT_CONFIGS:
            args.configs = "woodbury:dense:auto,woodbury:packed:auto,direct:dense:auto,woodbury:dense:cuda"
        args.shapes = "dry run: 2 layers, hidden 24, intermediate 96"
    return args


def environment(torch, device) -> dict:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = None
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else f"CPU {platform.machine()} (dry run)"
    return {"device": name, "torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda,
            "python": platform.python_version(), "date": datetime.date.today().isoformat(),
            "command": "python bench/bench_prune_gpu.py " + " ".join(sys.argv[1:])}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before obert_kernels decorates its kernels
    sys.path.insert(0, str(ROOT))
    import torch

    import obert_kernels as ok

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (use --dry-run to check the plumbing on the CPU)")
    shapes = minilm_shapes(2, 24, 96) if args.dry_run else minilm_shapes()
    weights, grads = make_inputs(shapes, args.pool, device, args.seed)
    record = {"environment": environment(torch, device), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "weights": sum(w.numel() for w in weights.values()), "tensors": len(weights), "configs": []}
    print(f"{record['environment']['device']}: {record['weights']:,} weights in {len(weights)} tensors", flush=True)
    for text in args.configs.split(","):
        r = run_config(ok, weights, grads, text.strip(), args, device)
        record["configs"].append(r)
        print(f"{r['config']}: " + (f"skipped: {r['skipped']}" if "skipped" in r else
              f"add_grads {r['add_grads_s']:.3f} s, prune {r['prune_s']:.3f} s "
              f"(inversion {fmt(r['inversion_s'])}, scoring {fmt(r['scoring_s'])}, update {fmt(r['update_s'])})"), flush=True)
    if device == "cuda" and args.finv_memory_d:
        del weights, grads
        torch.cuda.empty_cache()
        record["finv_memory"] = finv_memory(ok, args.finv_memory_d, args.block_size, device)
    text = markdown(record)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"prune-{'dryrun-cpu' if args.dry_run else 'gpu'}-{record['environment']['date']}"
        stem.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
        stem.with_suffix(".md").write_text(text)
        print(f"wrote {stem}.json and .md")
    return record


if __name__ == "__main__":
    main()
