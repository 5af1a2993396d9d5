"""FisherPruner end to end on the CPU, as a user calls it, vs the naive per-gradient update.

Two measurements in one process (issue 15):

1. Fisher build through the public API: ``FisherPruner({"w": p}, block_size=50,
   num_grads=1024, damp=1e-6)`` for a 1000×1000 weight, 1024 × ``add_grads``, then
   ``fisher_inverse("w")``; against the reference implementation's per-gradient update
   (``ops.naive_woodbury_update``, one gradient a call) on the same gradients. Phases: the
   add_grads loop (of which the batched accumulation; the rest is per-gradient bookkeeping),
   and fisher_inverse (of which the Cholesky inversion), each with GFLOP/s and GB/s against a
   GEMM rate and a copy bandwidth measured here first; error against float64 (explicit F,
   inverted in float64) on sampled blocks, for both, with SPEC §4's rule (≤ 2× naive's error).
2. all-MiniLM-L6-v2 gradient passes (Gauss-Newton probe, batches of stdlib sentences) with and
   without a FisherPruner attached to its 36 encoder Linear weights: what add_grads adds per
   gradient to the bare forward+backward. Bare and attached passes alternate on the same batches.
   m = 1024 gradients by default (FisherPruner's num_grads): the first add_grads allocates and
   first-touches F and the buffer (2.7 GB at B = k = 32), once per m gradients.

Targets (issue 15): ≥ 15× the naive update end to end at d = 10^6, B = 50, m = 1024 (with
error no worse than today's); the pruner adds ≤ 10% to the bare MiniLM backward passes.

Counting (SPEC §5): 4·d·B flops a gradient credited to both; the accumulation does 2·d·B a
gradient (full B×B products), the inversion ~B³ a block; bytes: naive 3·4·d·B a gradient,
bookkeeping 2·4·d a gradient (read the gradient, write the buffer).

Gradients: a pool of ``--pool`` distinct gradients (log-normal per-coordinate scales and a
shared low-rank part, as bench_woodbury_cpu.py), generated before any clock starts and cycled
(4 MB each at d = 10^6: the default 256 is 1 GB; pass --pool 1024 for all-distinct gradients).

    python bench/bench_pruner_cpu.py                 # the full run; writes bench/results/cpu-pruner-<date>.{json,txt}
    python bench/bench_pruner_cpu.py --quick         # a smoke run (d = 10^5, m = 64, 8 MiniLM gradients), not saved
    python bench/bench_pruner_cpu.py --shared ...    # mark the results as taken on a shared machine

Results are marked "shared" when --shared is given or the rest of the machine used more than a
tenth of a core in the 2 s before the run (/proc/stat; the 1-minute load average > 0.5 where that
is missing): only a quiet machine's figures are for the README.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels import FisherPruner, ops  # noqa: E402
from obert_kernels.app.info import cpu_name, versions  # noqa: E402
from obert_kernels.ops.reference import spec_fisher_tolerance  # noqa: E402

# read (not imported) by `python -m obert_kernels bench`: what it needs, and a short run's arguments
REQUIRES = ("cpu",)
QUICK_ARGS = ["--quick"]
RESULTS = Path(__file__).resolve().parent / "results"
QUICK = {"rows": 200, "cols": 500, "num_grads": 64, "pool": 64, "ref_blocks": 64, "minilm_grads": 8,
         "gemm_n": 1024, "copy_mib": 64}


# ---- the machine ---------------------------------------------------------------------
def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def others_busy_cores(seconds: float = 2.0) -> float | None:
    """Cores' worth of CPU time the rest of the machine used over ``seconds`` while this process
    slept (/proc/stat's busy jiffies; None where it is missing). The 1-minute load average lags
    the run before: on 2026-12-07 it marked the second and third of three back-to-back runs shared
    with nothing else running (bench/results/cpu-pruner-amd25-runs-2026-12-07.txt)."""
    def busy() -> int | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system, then irq softirq steal (guest time is already counted in user)
        return sum(fields[0:3]) + sum(fields[5:8])
    before = busy()
    time.sleep(seconds)
    after = busy()
    if before is None or after is None:
        return None
    return round((after - before) / (os.sysconf("SC_CLK_TCK") * seconds), 2)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def best_of(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_gflops(n: int = 2048) -> float:
    """The machine's fp32 GEMM rate: one n×n×n matmul, best of 3 (after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2.0 * n**3 / best_of(lambda: a @ b) / 1e9


def copy_gbps(mib: int = 256) -> float:
    """Copy bandwidth: read + write of a float32 tensor of `mib` MiB, best of 3."""
    src = torch.randn(mib << 18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2.0 * src.numel() * 4 / best_of(lambda: dst.copy_(src)) / 1e9


# ---- inputs and timers ---------------------------------------------------------------
def gradient_pool(count: int, d: int, seed: int) -> torch.Tensor:
    """(count, d) float32: anisotropic, correlated gradients of scale ~1e-3."""
    gen = torch.Generator().manual_seed(seed)
    col_scale = torch.exp(torch.randn(d, generator=gen))
    shared = torch.randn(count, 4, generator=gen) @ torch.randn(4, d, generator=gen)
    return (torch.randn(count, d, generator=gen) + 0.5 * shared) * col_scale * 1e-3


class OpTimer:
    """Wraps ``ops.<name>`` (as the pruner looks it up at call time) and sums its wall time."""

    def __init__(self, name: str):
        self.name, self.seconds, self.calls = name, 0.0, 0
        self._original = getattr(ops, name)

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        setattr(ops, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(ops, self.name, self._original)


# ---- 1. the Fisher build -------------------------------------------------------------
def build_with_pruner(pool: torch.Tensor, shape: tuple[int, int], args) -> tuple[torch.Tensor, dict]:
    """FisherPruner as a user drives it; returns F⁻¹ (num_blocks, B, B) and the phase times."""
    weight = torch.randn(shape)
    pruner = FisherPruner({"w": weight}, block_size=args.block_size, num_grads=args.num_grads,
                          damp=args.damp, fisher_storage=args.storage, verbose=False)
    with OpTimer("fisher_accumulate") as acc, OpTimer("woodbury_update") as wood:
        start = time.perf_counter()
        for i in range(args.num_grads):
            pruner.add_grads({"w": pool[i % len(pool)].view(shape)})
        loop_s = time.perf_counter() - start
        in_loop_s = acc.seconds + wood.seconds
        with OpTimer("fisher_invert") as inv:
            start = time.perf_counter()
            finv = pruner.fisher_inverse("w")
            inverse_s = time.perf_counter() - start
    # add_grads applies a full chunk at the next call (issue 14), so the last chunk is applied
    # inside fisher_inverse: count that accumulation with the loop, as before
    last_chunk_s = acc.seconds + wood.seconds - in_loop_s
    loop_s, inverse_s = loop_s + last_chunk_s, inverse_s - last_chunk_s
    return finv, {"method": pruner.fisher_method, "storage": pruner.fisher_storage, "add_grads_s": loop_s,
                  "accumulate_s": acc.seconds + wood.seconds, "accumulate_calls": acc.calls + wood.calls, "fisher_inverse_s": inverse_s,
                  "invert_op_s": inv.seconds, "total_s": loop_s + inverse_s}


def build_naive(pool: torch.Tensor, num_blocks: int, args) -> tuple[torch.Tensor, float]:
    """The reference implementation's loop: one rank-1 update per gradient."""
    finv = ops.init_finv(num_blocks, args.block_size, args.damp)
    start = time.perf_counter()
    for i in range(args.num_grads):
        ops.naive_woodbury_update(finv, pool[i % len(pool)].view(1, -1), args.num_grads)
    return finv, time.perf_counter() - start


def sampled_reference(pool: torch.Tensor, ref_idx: torch.Tensor, args) -> torch.Tensor:
    """float64 F⁻¹ of the sampled blocks from all m gradients: (len(ref_idx), B, B)."""
    B, m = args.block_size, args.num_grads
    nb = ref_idx.max().item() + 1
    blocks = torch.nn.functional.pad(pool, (0, max(0, nb * B - pool.shape[1])))[:, : nb * B].view(len(pool), nb, B)
    sample = blocks[:, ref_idx][torch.arange(m) % len(pool)]  # (m, refs, B)
    return ops.fisher_inverse_ref(sample.reshape(m, -1), B, args.damp, num_grads=m)


def rel_err(finv: torch.Tensor, ref_idx: torch.Tensor, ref: torch.Tensor) -> float:
    return ((finv[ref_idx].double() - ref).norm() / ref.norm()).item()


def fisher_build(args, ceilings: dict) -> dict:
    shape = (args.rows, args.cols)
    d, B, m = args.rows * args.cols, args.block_size, args.num_grads
    nb = -(-d // B)
    pool = gradient_pool(min(args.pool, m), d, args.seed)
    ref_idx = torch.randperm(nb, generator=torch.Generator().manual_seed(args.seed + 1))[: args.ref_blocks].sort().values
    ref = sampled_reference(pool, ref_idx, args)
    finv, phases = build_with_pruner(pool, shape, args)
    pruner_err = rel_err(finv, ref_idx, ref)
    del finv
    naive_s, naive_err = None, None
    if not args.skip_naive:
        finv, naive_s = build_naive(pool, nb, args)
        naive_err = rel_err(finv, ref_idx, ref)
        del finv
    return {"d": d, "shape": list(shape), "B": B, "m": m, "pool": len(pool), "damp": args.damp,
            "ref_blocks": len(ref_idx), "pruner": phases, "pruner_rel_err": pruner_err,
            "naive_s": naive_s, "naive_rel_err": naive_err, **build_rates(phases, naive_s, d, B, m, nb, ceilings)}


def build_rates(ph: dict, naive_s: float | None, d: int, B: int, m: int, nb: int, ceilings: dict) -> dict:
    """GFLOP/s and GB/s of each phase (SPEC §5 counts), and the ratios the targets ask for."""
    bookkeeping_s = ph["add_grads_s"] - ph["accumulate_s"]
    rates = {
        "end_to_end_gflops": 4.0 * d * B * m / ph["total_s"] / 1e9,
        "accumulate_gflops": 2.0 * nb * B * B * m / ph["accumulate_s"] / 1e9 if ph["accumulate_s"] else None,
        "invert_gflops": 1.0 * nb * B**3 / ph["invert_op_s"] / 1e9 if ph["invert_op_s"] else None,
        "bookkeeping_s": bookkeeping_s,
        "bookkeeping_ms_per_grad": 1e3 * bookkeeping_s / m,
        "bookkeeping_gbps": 2.0 * 4 * d * m / bookkeeping_s / 1e9 if bookkeeping_s > 0 else None,
    }
    rates["accumulate_vs_gemm"] = rates["accumulate_gflops"] / ceilings["gemm_gflops"] if rates["accumulate_gflops"] else None
    if naive_s:
        rates.update(naive_gflops=4.0 * d * B * m / naive_s / 1e9, naive_gbps=3.0 * 4 * d * B * m / naive_s / 1e9,
                     speedup_vs_naive=naive_s / ph["total_s"])
    return rates


# ---- 2. MiniLM gradient passes ---------------------------------------------------------
def minilm_overhead(args) -> dict:
    """Bare forward+backward vs the same followed by pruner.add_grads(), alternating, same batches.

    With --minilm-pruned S, the tensors first get magnitude keep-masks at sparsity S (a later
    step of gradual pruning: the gradient copies apply masks), and two pruners alternate on the
    same gradients: the one-pass C++ copy (``ops.copy_rows``) and the per-tensor path."""
    from obert_kernels.app.text import stdlib_sentences
    from obert_kernels.integrations.hf_models import encoder_weights, load_sentence_encoder, sentence_batches
    from obert_kernels.recipes.probes import GaussNewtonProbe

    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=args.minilm_max_length)
    model, n = encoder.model, args.minilm_grads
    probe = GaussNewtonProbe(encoder.embed, seed=args.seed)
    batches = list(islice(sentence_batches(encoder, stdlib_sentences(2000), args.minilm_batch, seed=args.seed), n))
    weights = dict(encoder_weights(model))
    ways = ["one pass", "per tensor"] if args.minilm_pruned else ["default"]
    pruners = {w: FisherPruner(weights, block_size=args.minilm_block_size, num_grads=n, damp=args.damp,
                               chunk_size=args.minilm_chunk, fisher_storage=args.storage, verbose=False) for w in ways}
    if args.minilm_pruned:
        masks = {name: w.detach().abs() > w.detach().abs().flatten().kthvalue(max(1, int(args.minilm_pruned * w.numel()))).values
                 for name, w in weights.items()}
        for pruner in pruners.values():
            pruner.load_state_dict({"masks": masks})

    def backward(batch) -> float:
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        probe(model, batch).backward()
        return time.perf_counter() - start

    backward(batches[0])  # warm-up
    bare, attached, add = [], {w: [] for w in ways}, {w: [] for w in ways}
    for batch in batches:
        bare.append(backward(batch))
        for way in ways:
            attached[way].append(backward(batch))
            with one_pass_copies(way != "per tensor"):
                start = time.perf_counter()
                pruners[way].add_grads()
                add[way].append(time.perf_counter() - start)
    out = {"weights": sum(w.numel() for w in weights.values()), "tensors": len(weights), "grads": n,
           "batch": args.minilm_batch, "max_length": args.minilm_max_length, "B": args.minilm_block_size,
           "chunk": pruners[ways[0]].chunk_size, "storage": pruners[ways[0]].fisher_storage, "pruned": args.minilm_pruned,
           "bare_backward_s": sum(bare)}
    for way in ways:
        part = {"attached_backward_s": sum(attached[way]), "add_grads_s": sum(add[way]),
                "add_grads_ms_per_grad": 1e3 * sum(add[way]) / n, **add_grads_parts(add[way], out["chunk"]),
                "overhead_vs_bare": sum(add[way]) / sum(bare),
                "overhead_end_to_end": (sum(attached[way]) + sum(add[way])) / sum(bare) - 1.0}
        if way == "default":
            out.update(part)
        else:
            out[way] = part
    return out


@contextlib.contextmanager
def one_pass_copies(allowed: bool):
    """The pruner's one-pass copy as it decides (allowed), or never (the per-tensor path)."""
    from obert_kernels.core import grad_buffer

    saved = grad_buffer.GradBuffer.__dict__["checks_while_copying"]
    if not allowed:
        grad_buffer.GradBuffer.checks_while_copying = staticmethod(lambda *a: False)
    try:
        yield
    finally:
        grad_buffer.GradBuffer.checks_while_copying = saved


def add_grads_parts(add: list[float], chunk: int) -> dict:
    """Where the add_grads time goes, by call: the first allocates (and first-touches) the Fisher
    state and the buffer, every chunk-th after it applies the full chunk before its own copy (a
    flush), the others only copy and check their gradient."""
    flushes = [t for i, t in enumerate(add) if i and i % chunk == 0]
    copies = [t for i, t in enumerate(add) if i and i % chunk]
    return {"first_call_s": add[0], "flush_calls": len(flushes), "flush_calls_s": sum(flushes),
            "copy_calls": len(copies), "copy_calls_s": sum(copies),
            "copy_call_ms_median": 1e3 * statistics.median(copies) if copies else None}


# ---- output --------------------------------------------------------------------------
def report_text(res: dict) -> str:
    m, b = res["machine"], res.get("build")
    lines = [f"FisherPruner on the CPU (issue 15) — {res['date']}, machine {res['machine_state'].upper()}",
             f"machine: {m['cpu']}, {m['cores']} cores, commit {m['commit']}, torch {m['versions'].get('torch')} ({m['threads']} threads); "
             f"load average at start {m['load_start']}, at end {m['load_end']}; "
             f"other processes' CPU in the 2 s before: {m.get('others_busy_cores_start')} cores",
             f"ceilings measured here: fp32 GEMM {res['ceilings']['gemm_gflops']:.1f} GFLOP/s, "
             f"copy {res['ceilings']['copy_gbps']:.1f} GB/s",
             f"command: {res['command']}", ""]
    if b:
        p = b["pruner"]
        lines += [f"Fisher build: d={b['d']:,} ({b['shape'][0]}x{b['shape'][1]}), B={b['B']}, m={b['m']}, "
                  f"damp={b['damp']:g}, {b['pool']} distinct gradients, method {p['method']}, "
                  f"F {p.get('storage', res['args']['storage'])}",
                  "| phase | s | ms/grad | rate |", "| --- | ---: | ---: | --- |",
                  row("add_grads loop", p["add_grads_s"], b["m"], ""),
                  row("  of which accumulate", p["accumulate_s"], b["m"], gf(b["accumulate_gflops"], b["accumulate_vs_gemm"])),
                  row("  of which bookkeeping", b["bookkeeping_s"], b["m"], gb(b["bookkeeping_gbps"], res["ceilings"]["copy_gbps"])),
                  row("fisher_inverse", p["fisher_inverse_s"], b["m"], ""),
                  row("  of which invert", p["invert_op_s"], b["m"], gf(b["invert_gflops"], None)),
                  row("pruner total", p["total_s"], b["m"], gf(b["end_to_end_gflops"], None) + " (4·d·B a gradient)")]
        if b["naive_s"]:
            lines += [row("naive per-gradient", b["naive_s"], b["m"], gf(b["naive_gflops"], None) + ", "
                          + gb(b["naive_gbps"], res["ceilings"]["copy_gbps"])),
                      "", f"speedup vs naive: {b['speedup_vs_naive']:.1f}x (target >= 15x)"]
        lines.append(f"rel err vs float64 on {b['ref_blocks']} blocks: pruner {b['pruner_rel_err']:.2e}"
                     + (f", naive {b['naive_rel_err']:.2e} (SPEC §4: pruner <= ~2x naive: "
                        f"{'PASS' if b['pruner_rel_err'] <= spec_fisher_tolerance(b['naive_rel_err']) else 'FAIL'})" if b["naive_rel_err"] else ""))
    mini = res.get("minilm")
    if mini and mini.get("pruned"):
        lines += ["", f"MiniLM gradient passes with magnitude keep-masks at {mini['pruned']:.0%} (a later gradual step): "
                  f"{mini['grads']} gradients of {mini['batch']} sentences, {mini['tensors']} tensors, B={mini['B']}, "
                  f"k={mini['chunk']}; bare forward+backward {mini['bare_backward_s']:.2f} s"]
        for way in ("one pass", "per tensor"):
            w = mini[way]
            lines.append(f"  {way}: add_grads {w['add_grads_s']:.2f} s (+{100 * w['overhead_vs_bare']:.1f}%), of which "
                         f"first call {w['first_call_s']:.2f} s, {w['flush_calls']} flushing calls {w['flush_calls_s']:.2f} s, "
                         f"{w['copy_calls']} copying calls {w['copy_calls_s']:.2f} s (median {w['copy_call_ms_median']:.1f} ms)")
        mini = None
    if mini:
        lines += ["", f"MiniLM gradient passes: {mini['grads']} gradients of {mini['batch']} sentences (max {mini['max_length']} "
                  f"tokens), pruner on {mini['tensors']} tensors ({mini['weights']:,} weights), B={mini['B']}, k={mini['chunk']}, "
                  f"F {mini.get('storage', res['args']['storage'])}",
                  f"bare forward+backward {mini['bare_backward_s']:.2f} s; add_grads {mini['add_grads_s']:.2f} s "
                  f"({mini['add_grads_ms_per_grad']:.1f} ms a gradient): +{100 * mini['overhead_vs_bare']:.1f}% "
                  f"(target <= 10%); attached passes end to end +{100 * mini['overhead_end_to_end']:.1f}%"]
        if "first_call_s" in mini:
            bare = mini["bare_backward_s"]
            lines += [f"  of which: first call (allocates F and the buffer) {mini['first_call_s']:.2f} s "
                      f"(+{100 * mini['first_call_s'] / bare:.1f}%); {mini['flush_calls']} calls that flush a chunk "
                      f"{mini['flush_calls_s']:.2f} s (+{100 * mini['flush_calls_s'] / bare:.1f}%); {mini['copy_calls']} calls "
                      f"that copy only {mini['copy_calls_s']:.2f} s (+{100 * mini['copy_calls_s'] / bare:.1f}%, median "
                      f"{mini['copy_call_ms_median']:.1f} ms vs {1e3 * bare / mini['grads']:.0f} ms a bare pass); the last "
                      f"chunk's flush is prune()'s, not counted here",
                      f"  steady state (flushes and copies, per gradient after the first call): "
                      f"+{100 * (mini['flush_calls_s'] + mini['copy_calls_s']) / (bare * (mini['grads'] - 1) / mini['grads']):.1f}%"]
    return "\n".join(lines) + "\n"


def row(name: str, seconds: float, m: int, rate: str) -> str:
    return f"| {name} | {seconds:.2f} | {1e3 * seconds / m:.2f} | {rate} |"


def gf(gflops: float | None, frac: float | None) -> str:
    if gflops is None:
        return "-"
    return f"{gflops:.1f} GFLOP/s" + (f" ({100 * frac:.0f}% of GEMM)" if frac else "")


def gb(gbps: float | None, ceiling: float) -> str:
    return "-" if gbps is None else f"{gbps:.1f} GB/s ({100 * gbps / ceiling:.0f}% of copy)"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cols", type=int, default=1000)
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--num-grads", type=int, default=1024)
    ap.add_argument("--damp", type=float, default=1e-6)
    ap.add_argument("--storage", choices=["auto", "dense", "packed"], default="auto",
                    help="FisherPruner's fisher_storage, in both parts (packed: the upper triangles, half of F's memory; "
                         "auto, its default: packed on the cpp backend, else dense; the report names what it chose)")
    ap.add_argument("--pool", type=int, default=256, help="distinct gradients, cycled")
    ap.add_argument("--ref-blocks", type=int, default=256, help="blocks checked against float64")
    ap.add_argument("--skip-naive", action="store_true")
    # FisherPruner's num_grads (the paper's m): the first call's allocation of F and the buffer is
    # paid once per m gradients, so a shorter run overstates it (2026-12-01, AMD EPYC: first call +64.7%
    # of the bare passes at m = 64, +2.3-3.9% at m = 1024; bench/results/cpu-pruner-amd-runs-2026-12-01.txt)
    ap.add_argument("--minilm-grads", type=int, default=1024, help="0 skips the MiniLM part")
    ap.add_argument("--minilm-batch", type=int, default=4)
    ap.add_argument("--minilm-max-length", type=int, default=64)
    ap.add_argument("--minilm-block-size", type=int, default=32)
    ap.add_argument("--minilm-chunk", type=int, default=32,
                    help="the MiniLM pruner's chunk_size k (memory: k·d floats of buffer; F is read and written once per chunk)")
    ap.add_argument("--minilm-pruned", type=float, default=0.0, metavar="S",
                    help="magnitude keep-masks at sparsity S first; then the one-pass copy against the per-tensor path")
    ap.add_argument("--gemm-n", type=int, default=2048, help="n of the n×n×n matmul that measures the GEMM rate")
    ap.add_argument("--copy-mib", type=int, default=256, help="MiB copied to measure the copy bandwidth")
    ap.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    ap.add_argument("--shared", action="store_true", help="mark the results as taken on a shared machine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="folder for the .json and .txt (default bench/results/; --quick saves only with --out)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_start = load_average()
    busy = others_busy_cores()
    # quiet: the rest of the machine used under a tenth of a core while this slept (or, where
    # /proc/stat is missing, the 1-minute load average is under 0.5)
    lagging = load_start is not None and load_start[0] > 0.5
    shared = args.shared or (busy > 0.1 if busy is not None else lagging)
    ceilings = {"gemm_gflops": gemm_gflops(args.gemm_n), "copy_gbps": copy_gbps(args.copy_mib)}
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine_state": "shared" if shared else "quiet",
           "command": "python bench/bench_pruner_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "ceilings": ceilings}
    res["build"] = fisher_build(args, ceilings) if args.num_grads else None
    res["minilm"] = minilm_overhead(args) if args.minilm_grads else None
    res["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "commit": git_commit(),
                      "load_start": load_start, "others_busy_cores_start": busy, "load_end": load_average(),
                      "versions": versions()}
    text = report_text(res)
    print(text, end="")
    out = args.out or (None if args.quick else RESULTS)
    if out is not None and not args.no_save:
        stem = (f"cpu-pruner-{res['date'][:10]}" + ("" if args.storage == "auto" else f"-{args.storage}")
                + ("-quick" if args.quick else "") + ("-shared" if shared else ""))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / f"{stem}.txt").write_text(text)
        print(f"wrote {out / stem}.json and .txt")
    return res


if __name__ == "__main__":
    main()
