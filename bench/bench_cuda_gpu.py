"""Fisher-inverse build on a GPU: the CUDA backend (dense and packed F⁻¹) vs the naive
per-gradient update, in one run, against the device's measured ceilings.

Target (issue 4, H100): d = 8.5e7, B = 50, m = 1024 in < 0.5 s total (the naive update
needs well over 10 s; the fp32 FMA ceiling is ~0.26 s), packed F⁻¹ ≤ 55% of dense.

Method (bench/README conventions):
- count first: 4·d·B flops per gradient (SPEC §5, credited to every method); bytes: naive
  3·4·d·B per gradient, fused 2·(F⁻¹ bytes) per chunk + the chunk's gradients;
- ceilings measured here: a big fp32 matmul with TF32 off (FMA ceiling) and a big
  device-to-device copy (bandwidth);
- inputs: a pool of distinct gradient chunks generated before any clock starts (block-major,
  as FisherPruner buffers them), cycled through so no chunk is reused back to back; never zeros;
- every method is checked against float64 (explicit F inverted on the CPU) on sampled
  blocks before its time is reported; times are CUDA-event medians after a warm-up build.

    python bench/bench_cuda_gpu.py                       # the target size, all methods
    python bench/bench_cuda_gpu.py --d 10000000          # smaller
    python bench/bench_cuda_gpu.py --backends cuda-packed --rows 1,2   # the rows-per-thread choice
    python bench/bench_cuda_gpu.py --device cpu --backends naive,torch --d 3000 --num-grads 64   # plumbing only

Writes bench/results/gpu-cuda-woodbury-<date>.json and .md (or --out DIR).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels import ops  # noqa: E402
from obert_kernels.ops.backends import cuda as cuda_backend  # noqa: E402

METHODS = ("naive", "cuda-dense", "cuda-packed", "torch", "triton", "triton-packed", "direct", "direct-triton")
PACKED = ("cuda-packed", "triton-packed")  # F⁻¹ stored as upper triangles


# ---- counting ------------------------------------------------------------------------
def woodbury_flops(d: int, B: int, m: int) -> float:
    """SPEC §5: u = F⁻¹g and the rank-1 update, 4·d·B flops per gradient."""
    return 4.0 * d * B * m


def finv_bytes(num_blocks: int, B: int, packed: bool) -> int:
    return num_blocks * (B * (B + 1) // 2 if packed else B * B) * 4


def method_bytes(method: str, num_blocks: int, B: int, m: int, k: int) -> float:
    """Device-memory traffic the method needs at least (fp32)."""
    grads = 4.0 * num_blocks * B * m
    if method == "naive":
        return 3.0 * finv_bytes(num_blocks, B, False) * m + grads
    chunks = -(-m // k)
    return 2.0 * finv_bytes(num_blocks, B, method in PACKED) * chunks + grads


# ---- inputs --------------------------------------------------------------------------
def make_chunk(index: int, k: int, num_blocks: int, B: int, seed: int, device) -> torch.Tensor:
    """Gradient chunk (num_blocks, k, B) float32, reproducible from (seed, index): per-coordinate
    log-normal scales and a shared low-rank part, so the Fisher blocks are anisotropic."""
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)
    scale = torch.exp(torch.randn(num_blocks, 1, B, generator=torch.Generator(device=device).manual_seed(seed), device=device))
    noise = torch.randn(num_blocks, k, B, generator=gen, device=device)
    shared = torch.randn(1, k, 4, generator=gen, device=device) @ torch.randn(num_blocks, 4, B, generator=gen, device=device)
    return (noise + 0.5 * shared) * scale * 1e-3


def sequence(m: int, k: int, pool: int) -> list[tuple[int, int]]:
    """(pool index, gradients) per call: chunks cycle through the pool."""
    return [(i % pool, min(k, m - s)) for i, s in enumerate(range(0, m, k))]


def reference_blocks(chunks, seq, blocks: torch.Tensor, B: int, damp: float, m: int) -> torch.Tensor:
    """float64 F⁻¹ of the sampled blocks, from the same gradient sequence (CPU)."""
    g = torch.cat([chunks[p][blocks, :n].double().cpu() for p, n in seq], dim=1)  # (nb_s, m, B)
    fisher = g.transpose(1, 2) @ g / m + damp * torch.eye(B, dtype=torch.float64)
    return torch.linalg.inv(fisher)


# ---- methods -------------------------------------------------------------------------
def build(method: str, chunks, seq, num_blocks: int, B: int, damp: float, m: int, device) -> torch.Tensor:
    """Build F⁻¹ with one method; returns the dense or packed result."""
    if method.startswith("direct"):  # direct: torch backend; direct-triton: the Triton kernels
        backend = "triton" if method == "direct-triton" else "torch"
        fisher = torch.zeros(num_blocks, B, B, device=device)
        for p, n in seq:
            ops.fisher_accumulate(fisher, chunks[p][:, :n], m, backend=backend)
        return ops.fisher_invert(fisher, damp, backend=backend)
    packed = method in PACKED
    finv = (ops.init_finv_packed if packed else ops.init_finv)(num_blocks, B, damp, device=device)
    for p, n in seq:
        g = chunks[p][:, :n]
        if method == "naive":
            ops.naive_woodbury_update(finv, g, m)
        else:
            ops.woodbury_update(finv, g, m, backend=method.split("-")[0])
    return finv


class Timer:
    """CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def measure_ceilings(device, timer: Timer) -> dict:
    """fp32 FMA ceiling (matmul, TF32 off) and copy bandwidth, measured here."""
    if not timer.cuda:
        return {"fp32_tflops": None, "copy_gbs": None, "note": "ceilings are measured on CUDA devices only"}
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        n = 8192
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b
        t = statistics.median(timer(lambda: a @ b) for _ in range(10))
        tflops = 2 * n**3 / t / 1e12
        del a, b
        src = torch.randn(2**30 // 4 * 4, device=device)  # 4 GiB
        dst = torch.empty_like(src)
        dst.copy_(src)
        t = statistics.median(timer(lambda: dst.copy_(src)) for _ in range(10))
        gbs = 2 * src.numel() * 4 / t / 1e9
        del src, dst
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return {"fp32_tflops": tflops, "copy_gbs": gbs, "matmul_n": 8192, "copy_bytes": 2**32}


def environment(device) -> dict:
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__, "platform": platform.platform(), "cuda_extension": cuda_backend.status()}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, sm_count=props.multi_processor_count, memory_gib=props.total_memory / 2**30,
                   torch_cuda=torch.version.cuda)
    else:
        env.update(device=platform.processor() or "cpu", torch_threads=torch.get_num_threads())
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


def run(args) -> dict:
    device = torch.device(args.device)
    timer = Timer(device)
    d, B, m, k = args.d, args.block_size, args.num_grads, args.chunk
    nb = -(-d // B)
    methods = [x for x in args.backends.split(",") if x]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    chunks = [make_chunk(i, k, nb, B, args.seed, device) for i in range(args.pool)]
    seq = sequence(m, k, args.pool)
    sample = torch.randperm(nb, generator=torch.Generator().manual_seed(args.seed + 1))[: args.ref_blocks].sort().values
    ref = reference_blocks(chunks, seq, sample.to(device), B, args.damp, m)
    result = {"config": vars(args) | {"num_blocks": nb, "flops": woodbury_flops(d, B, m)},
              "environment": environment(device), "ceilings": measure_ceilings(device, timer), "methods": {}}
    result["memory"] = {"finv_dense_bytes": finv_bytes(nb, B, False), "finv_packed_bytes": finv_bytes(nb, B, True),
                        "packed_over_dense": finv_bytes(nb, B, True) / finv_bytes(nb, B, False)}
    rows = [int(r) for r in str(args.rows).split(",")]
    for method in methods:
        for r_ in rows if method.startswith("cuda") else [0]:
            name = f"{method} (rows={r_ or 'default'})" if method.startswith("cuda") and len(rows) > 1 else method
            cuda_backend.WOODBURY_ROWS = r_  # F⁻¹ rows per thread in the CUDA Woodbury kernel
            try:
                r = run_method(method, chunks, seq, nb, B, m, k, args, device, timer, sample, ref)
            except torch.cuda.OutOfMemoryError as exc:
                r = {"skipped": f"out of memory ({str(exc).splitlines()[0]})"}
            except ValueError as exc:  # e.g. rows=2 outside 32 < B ≤ 64
                r = {"skipped": str(exc)}
            result["methods"][name] = r
            print(format_row(name, r), flush=True)
    cuda_backend.WOODBURY_ROWS = 0
    naive = result["methods"].get("naive", {})
    for r in result["methods"].values():
        if r.get("seconds") and naive.get("seconds"):
            r["speedup_vs_naive"] = naive["seconds"] / r["seconds"]
            # SPEC §4: no worse than about twice the plain per-gradient fp32 update's error
            r["within_spec_tolerance"] = r["rel_err_vs_float64"] <= ops.reference.spec_fisher_tolerance(naive["rel_err_vs_float64"])
    return result


def run_method(method, chunks, seq, nb, B, m, k, args, device, timer, sample, ref) -> dict:
    if method.startswith(("cuda", "triton")) or method == "direct-triton":
        backend = "cuda" if method.startswith("cuda") else "triton"
        probe = ops.init_finv(1, B, 1.0, device=device)
        op = "fisher_accumulate" if method == "direct-triton" else "woodbury_update"
        reasons = ops.not_supported_reasons(op, backend, finv=probe, grads=torch.ones(1, B, device=device))
        if reasons:
            return {"skipped": "; ".join(reasons)}
    if timer.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    finv = build(method, chunks, seq, nb, B, args.damp, m, device)  # warm-up, and the result checked
    got = ops.unpack_upper(finv[sample.to(device)]) if finv.dim() == 2 else finv[sample.to(device)]
    err = float((got.double().cpu() - ref).norm() / ref.norm())
    del finv
    repeats = 1 if method == "naive" else args.repeats
    times = [timer(lambda: build(method, chunks, seq, nb, B, args.damp, m, device)) for _ in range(repeats)]
    seconds = statistics.median(times)
    out = {"seconds": seconds, "times": times, "rel_err_vs_float64": err,
           "tflops": woodbury_flops(nb * B, B, m) / seconds / 1e12,
           "gbs_min_traffic": method_bytes(method, nb, B, m, k) / seconds / 1e9}
    if timer.cuda:
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def format_row(method: str, r: dict) -> str:
    if "skipped" in r:
        return f"{method:12s} skipped: {r['skipped']}"
    return (f"{method:12s} {r['seconds']:9.3f} s  {r['tflops']:7.2f} TFLOP/s  {r['gbs_min_traffic']:8.1f} GB/s  "
            f"err {r['rel_err_vs_float64']:.1e}")


def markdown(result: dict) -> str:
    env, cfg, ceil, mem = result["environment"], result["config"], result["ceilings"], result["memory"]
    lines = [f"# Woodbury F⁻¹ build on {env['device']} ({env['date']})", "",
             f"d = {cfg['d']:,}, B = {cfg['block_size']}, m = {cfg['num_grads']}, k = {cfg['chunk']}, "
             f"damp = {cfg['damp']:g}; torch {env['torch']}, CUDA {env.get('torch_cuda')}, triton {env['triton']}, "
             f"commit {env['commit']}", "",
             f"Ceilings measured in this run: fp32 FMA {fmt(ceil['fp32_tflops'], '.1f')} TFLOP/s, "
             f"copy {fmt(ceil['copy_gbs'], '.0f')} GB/s. F⁻¹: dense {mem['finv_dense_bytes'] / 2**30:.2f} GiB, "
             f"packed {mem['finv_packed_bytes'] / 2**30:.2f} GiB ({mem['packed_over_dense']:.1%}).", "",
             "| method | total s | vs naive | TFLOP/s | % FMA ceiling | GB/s (min traffic) | peak mem GiB | rel. err vs float64 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in result["methods"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | |")
            continue
        pct = r["tflops"] / ceil["fp32_tflops"] if ceil.get("fp32_tflops") else None
        peak = r.get("peak_memory_bytes")
        lines.append(f"| {name} | {r['seconds']:.3f} | {fmt(r.get('speedup_vs_naive'), '.1f')}× | {r['tflops']:.2f} | "
                     f"{fmt(pct, '.0%')} | {r['gbs_min_traffic']:.0f} | {fmt(peak and peak / 2**30, '.1f')} | "
                     f"{r['rel_err_vs_float64']:.1e} |")
    return "\n".join(lines) + "\n"


def fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=85_000_000)
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--num-grads", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=32, help="gradients per woodbury_update call (k)")
    ap.add_argument("--pool", type=int, default=2, help="distinct gradient chunks cycled through (memory: pool·k·d floats)")
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--ref-blocks", type=int, default=64, help="blocks checked against float64")
    ap.add_argument("--repeats", type=int, default=3, help="timed builds per method (naive: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backends", default="naive,cuda-dense,cuda-packed,triton,direct", help=f"from {METHODS}")
    ap.add_argument("--rows", default="0", help="CUDA Woodbury kernel's F⁻¹ rows per thread to time: 0 (default), "
                    "1, 2 (32 < B ≤ 64), comma-separated, e.g. 1,2 to decide the default")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{'gpu' if args.device.startswith('cuda') else 'cpu'}-cuda-woodbury-{date.today().isoformat()}"
    result["config"]["out"] = str(args.out)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
