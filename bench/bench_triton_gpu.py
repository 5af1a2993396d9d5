"""GPU benchmark of the Triton backend (issue 3): Woodbury, the direct path, scoring and update.

For every d (weights), B (block size) and k (gradients per chunk) that fits in memory:

  triton    woodbury_update_triton: one program per block(s), the block kept in registers
            across the k gradients of a chunk (F⁻¹ read and written once per chunk)
  naive     the reference implementation's update (one einsum + one baddbmm per gradient),
            measured in the same run: the baseline of every "vs naive" ratio
  direct    fisher_accumulate_triton per chunk + fisher_invert_triton once per m gradients,
            amortised per gradient
  torch     woodbury_update_torch (rank-k batched products; optional, --methods)

and, per (d, B), obs_scores (unstructured, block4, 2:4; also writing the factors for the
update) and obs_update (obs, joint, block4/2:4 obs; obs also from the factors) against the
time to read F⁻¹ once at the measured bandwidth.

Method (bench/README conventions): flops and bytes are counted first (SPEC §5: 4·d·B
useful flops per gradient, also credited to the direct path; naive moves 3·4·d·B bytes per
gradient, the fused kernel 2·4·nb·B² per chunk plus the gradients); the device's ceilings
are measured (a large device-to-device copy for bandwidth; an 8192³ fp32 matmul with TF32
off for the FP32 FMA ceiling); times are triton.testing.do_bench medians after warm-up,
with L2 flushed between calls and gradient chunks rotated so no call finds its inputs in
cache; every config is checked against float64 on sampled blocks (first, last, random)
before it is timed, and never timed on zeros.

    python bench/bench_triton_gpu.py --out bench/results/             # the full grid (long)
    python bench/bench_triton_gpu.py --quick --out bench/results/     # d=1e6,8.5e7; B=50; k=32
    python bench/bench_triton_gpu.py --d 1e7 --block-sizes 50 --chunks 8,32 --tune
    python bench/bench_triton_gpu.py --dry-run                        # CPU, TRITON_INTERPRET=1, tiny

Writes <out>/triton-gpu-<device>-<date>.json and .md (device, versions, date, ceilings,
every row, every skipped config and why).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"woodbury_vs_naive": 20.0, "woodbury_fma_fraction": 0.40, "read_ratio": 2.0}
DEFAULT_D = "1e6,1e7,8.5e7"
DEFAULT_B = "32,50,64,128"
DEFAULT_K = "8,32,128"
TUNE_CANDIDATES = ((1, 1), (1, 2), (1, 4), (1, 8), (2, 2), (2, 4), (4, 4), (4, 1))


# ---- what to run -------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    d: int
    B: int
    k: int

    @property
    def nb(self) -> int:
        return -(-self.d // self.B)


def parse_list(text: str, kind=int) -> list:
    return [kind(float(x)) if kind is int else kind(x) for x in text.split(",") if x.strip()]


def enumerate_configs(ds, Bs, ks) -> list[Config]:
    """Every (d, B, k), smallest work first, so a run that is cut short still has the quick ones."""
    return sorted((Config(d, B, k) for d, B, k in itertools.product(ds, Bs, ks)), key=lambda c: (c.d * c.B, c.k))


# ---- counting (SPEC §5) ----------------------------------------------------------------------
def finv_bytes(cfg: Config) -> int:
    return 4 * cfg.nb * cfg.B * cfg.B


def chunk_bytes(cfg: Config) -> int:
    """One block-major gradient chunk (nb, k, B) float32."""
    return 4 * cfg.nb * cfg.k * cfg.B


def woodbury_flops_per_grad(cfg: Config) -> float:
    return 4.0 * cfg.d * cfg.B


def fused_bytes_per_chunk(cfg: Config) -> float:
    """F⁻¹ read + written once per chunk, plus the chunk's gradients."""
    return 2.0 * finv_bytes(cfg) + chunk_bytes(cfg)


def naive_bytes_per_grad(cfg: Config) -> float:
    """The per-gradient update reads F⁻¹ twice (F⁻¹g, then the rank-1 update) and writes it once."""
    return 3.0 * finv_bytes(cfg)


def rotation_count(cfg: Config, l2_bytes: int) -> int:
    """Gradient chunks to cycle through so that consecutive calls never share cached inputs."""
    return max(2, min(8, math.ceil(4 * l2_bytes / chunk_bytes(cfg)))) if chunk_bytes(cfg) < 4 * l2_bytes else 1


def memory_needed(cfg: Config, n_rot: int) -> int:
    """F⁻¹, the rotated chunks, the scoring/update inputs and outputs (d floats each, ×4),
    the L2-flush buffer of do_bench (256 MB) and 1 GB of slack for temporaries."""
    return finv_bytes(cfg) + n_rot * chunk_bytes(cfg) + 16 * cfg.d + (256 + 1024) * 2**20


# ---- timing ------------------------------------------------------------------------------------
def bench_ms(fn, device: str, min_runs: int = 5) -> float:
    """Median ms of fn: triton.testing.do_bench after warm-up (L2 flushed between calls);
    warm-up and repetition windows grow with the call's length so every median has ≥ min_runs."""
    if device == "cpu":  # --dry-run: the interpreter is slow and its times mean nothing; one warm call, one timed
        fn()
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    import torch
    from triton.testing import do_bench

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once_ms = 1e3 * (time.perf_counter() - start)
    return do_bench(fn, warmup=max(25, 2 * once_ms), rep=max(100, min_runs * once_ms), return_mode="median")


def measure_bandwidth(device: str) -> float:
    """GB/s of a 4 GiB device-to-device copy (bytes read + written)."""
    import torch

    n = (1 << 30) if device != "cpu" else (1 << 22)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    del src, dst
    return 2 * 4 * n / (ms * 1e-3) / 1e9


def measure_fma_ceiling(device: str) -> float:
    """TFLOP/s of an fp32 matmul with TF32 off: the FP32 FMA ceiling."""
    import torch

    n = 8192 if device != "cpu" else 256
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        ms = bench_ms(lambda: a @ b, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


# ---- inputs ------------------------------------------------------------------------------------
def make_chunks(cfg: Config, n_rot: int, device: str, seed: int):
    """n_rot block-major chunks (nb, k, B) float32: per-coordinate log-normal scales and a
    shared rank-4 part (anisotropic, correlated blocks, like real gradients), scale 1e-3;
    the last block's padding is zero, as in FisherPruner's buffer. Filled a slice of blocks
    at a time, so no temporary is larger than ~256 MB."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    step = max(1, (1 << 26) // (cfg.k * cfg.B))
    chunks = []
    for _ in range(n_rot):
        c = torch.empty(cfg.nb, cfg.k, cfg.B, device=device)
        mix = torch.randn(cfg.k, 4, generator=gen, device=device)
        for lo in range(0, cfg.nb, step):
            part = c[lo:lo + step]
            n = part.shape[0]
            part.normal_(generator=gen)
            basis = torch.randn(n, 4, cfg.B, generator=gen, device=device)
            part += 0.5 * torch.einsum("kr,nrb->nkb", mix, basis)
            col_gen = torch.Generator(device=device).manual_seed(seed * 7919 + lo)  # same scales in every chunk
            part *= torch.exp(torch.randn(n, 1, cfg.B, generator=col_gen, device=device)) * 1e-3
        pad = cfg.nb * cfg.B - cfg.d
        if pad:
            c[-1, :, cfg.B - pad:] = 0
        chunks.append(c)
    return chunks


def sample_blocks(cfg: Config, count: int, seed: int):
    import torch

    picks = torch.randperm(cfg.nb, generator=torch.Generator().manual_seed(seed))[: max(0, count - 2)]
    return torch.unique(torch.cat([torch.tensor([0, cfg.nb - 1]), picks]))


def rel_err(out, ref) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


# ---- Fisher build --------------------------------------------------------------------------------
def check_fisher(cfg: Config, chunk, idx, args, ops, wt) -> dict:
    """Errors against float64, before timing, two ways:

    - one chunk at full size on sampled blocks (first, last, random): the kernels at the real
      d, so the 64-bit offsets of the last blocks are exercised; F = λI + (1/m)·(k gradients)
      is rank-deficient for k < B, the hard case for the direct path;
    - m gradients on 256 fresh blocks, applied k at a time: the pruner's situation.

    Each against the naive fp32 update on the same gradients (SPEC §4: ≤ ~2× its error)."""
    import torch

    device = chunk.device
    sample = chunk[idx.to(device)]  # (ns, k, B)
    ref = ops.fisher_inverse_ref(sample.permute(1, 0, 2).reshape(cfg.k, -1), cfg.B, args.damp, num_grads=args.num_grads)
    finv = ops.init_finv(cfg.nb, cfg.B, args.damp, device=device)
    wt.woodbury_update_triton(finv, chunk, args.num_grads)
    err = rel_err(finv[idx.to(device)], ref)
    finv.zero_()
    wt.fisher_accumulate_triton(finv, chunk, args.num_grads)
    wt.fisher_invert_triton(finv, args.damp)
    err_direct = rel_err(finv[idx.to(device)], ref)
    del finv
    err_naive = rel_err(ops.naive_woodbury_update(ops.init_finv(len(idx), cfg.B, args.damp, device=device),
                                                  sample, args.num_grads), ref)
    out = {"rel_err": err, "rel_err_naive": err_naive, "rel_err_direct": err_direct,
           "err_vs_naive": err / err_naive, "direct_vs_naive": err_direct / err_naive,
           "passed": err <= ops.reference.spec_fisher_tolerance(err_naive), "blocks_checked": len(idx)}
    out.update(check_fisher_m(cfg, args, ops, wt, device))
    return out


def check_fisher_m(cfg: Config, args, ops, wt, device) -> dict:
    """m gradients on 256 blocks, k at a time, for the kernel, the direct path and naive."""
    m = args.num_grads
    small = Config(min(256, cfg.nb) * cfg.B, cfg.B, m)
    grads = make_chunks(small, 1, device, args.seed + 11)[0]  # (ns, m, B)
    ref = ops.fisher_inverse_ref(grads.permute(1, 0, 2).reshape(m, -1), cfg.B, args.damp)
    finv = ops.init_finv(small.nb, cfg.B, args.damp, device=device)
    naive = ops.init_finv(small.nb, cfg.B, args.damp, device=device)
    fisher = finv.new_zeros(finv.shape)
    for lo in range(0, m, cfg.k):
        part = grads[:, lo:lo + cfg.k]
        wt.woodbury_update_triton(finv, part, m)
        wt.fisher_accumulate_triton(fisher, part, m)
        ops.naive_woodbury_update(naive, part, m)
    wt.fisher_invert_triton(fisher, args.damp)
    err_naive = rel_err(naive, ref)
    return {"m_rel_err": rel_err(finv, ref), "m_rel_err_direct": rel_err(fisher, ref), "m_rel_err_naive": err_naive,
            "m_err_vs_naive": rel_err(finv, ref) / err_naive, "m_direct_vs_naive": rel_err(fisher, ref) / err_naive}


def fisher_rows(cfg: Config, chunks, args, ceil, ops, wt, device) -> list[dict]:
    import torch

    m = args.num_grads
    rot = itertools.cycle(chunks)
    finv = ops.init_finv(cfg.nb, cfg.B, args.damp, device=device)
    wt.woodbury_update_triton(finv, chunks[0], m)  # a realistic, non-trivial F⁻¹ before timing
    rows = []

    def row(method, ms_per_grad, bytes_per_grad=None, **extra):
        r = {"d": cfg.d, "B": cfg.B, "k": cfg.k, "method": method, "ms_per_grad": ms_per_grad,
             "tflops": woodbury_flops_per_grad(cfg) / (ms_per_grad * 1e-3) / 1e12, **extra}
        r["fma_fraction"] = r["tflops"] / ceil["fma_tflops"] if ceil.get("fma_tflops") else None
        if bytes_per_grad is not None:
            r["gbps"] = bytes_per_grad / (ms_per_grad * 1e-3) / 1e9
            r["bw_fraction"] = r["gbps"] / ceil["bandwidth_gbps"] if ceil.get("bandwidth_gbps") else None
        rows.append(r)

    if "triton" in args.methods:
        ms = bench_ms(lambda: wt.woodbury_update_triton(finv, next(rot), m), device)
        P, G0, warps0 = wt.woodbury_launch_config(cfg.B)
        row("triton", ms / cfg.k, fused_bytes_per_chunk(cfg) / cfg.k, G=G0, num_warps=warps0)
        if args.tune:
            for G, warps in TUNE_CANDIDATES:
                if (G, warps) == (G0, warps0) or G * P > 256:
                    continue
                wt.WOODBURY_CONFIG_OVERRIDE.update(G=G, num_warps=warps)
                try:
                    ms = bench_ms(lambda: wt.woodbury_update_triton(finv, next(rot), m), device)
                    row("triton-tune", ms / cfg.k, fused_bytes_per_chunk(cfg) / cfg.k, G=G, num_warps=warps)
                except Exception as exc:  # a config that does not compile (registers) is reported, not fatal
                    rows.append({"d": cfg.d, "B": cfg.B, "k": cfg.k, "method": "triton-tune", "G": G,
                                 "num_warps": warps, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                finally:
                    wt.WOODBURY_CONFIG_OVERRIDE.clear()
    if "naive" in args.methods:
        kn = min(cfg.k, args.naive_chunk)  # per-gradient cost does not depend on k; keep calls short
        naive_chunks = [c[:, :kn] for c in chunks]
        nrot = itertools.cycle(naive_chunks)
        ms = bench_ms(lambda: ops.naive_woodbury_update(finv, next(nrot), m), device)
        row("naive", ms / kn, naive_bytes_per_grad(cfg))
    if "torch" in args.methods:
        ms = bench_ms(lambda: ops.woodbury_update(finv, next(rot), m, backend="torch"), device)
        row("torch", ms / cfg.k)
    if "direct" in args.methods:
        finv.zero_()
        ms_acc = bench_ms(lambda: wt.fisher_accumulate_triton(finv, next(rot), m), device)
        finv.zero_()
        wt.fisher_accumulate_triton(finv, chunks[0], m)
        ms_inv = bench_ms(lambda: wt.fisher_invert_triton(finv, args.damp), device)
        row("direct", ms_acc / cfg.k + ms_inv / m, accumulate_ms_per_chunk=ms_acc, invert_ms=ms_inv)
    del finv
    naive = next((r for r in rows if r["method"] == "naive"), None)
    for r in rows:
        if naive and "ms_per_grad" in r:
            r["vs_naive"] = naive["ms_per_grad"] / r["ms_per_grad"]
    return rows


# ---- scores and update ----------------------------------------------------------------------------
def nm_mask(d: int, device, gen):
    """A 2:4 prune mask: the 2 smallest of 4 random keys per group."""
    import torch

    keys = torch.rand(d // 4, 4, generator=gen, device=device)
    mask = torch.zeros(d // 4, 4, dtype=torch.bool, device=device)
    mask.scatter_(1, keys.topk(2, dim=1, largest=False).indices, True)
    return mask.reshape(-1)


def score_update_rows(cfg: Config, finv, args, ceil, ops, st, ut, parse_pattern, device) -> list[dict]:
    """Time obs_scores / obs_update at this (d, B), each checked on sampled blocks first."""
    import torch

    from obert_kernels.ops.blocks import padded_blocks

    gen = torch.Generator(device=device).manual_seed(args.seed + 7)
    w = torch.randn(cfg.d, generator=gen, device=device)
    read_ms = finv_bytes(cfg) / (ceil["bandwidth_gbps"] * 1e9) * 1e3 if ceil.get("bandwidth_gbps") else None
    idx = sample_blocks(cfg, args.check_blocks, args.seed + 3)
    di = idx.to(device)
    f_s = finv[di].cpu()
    pos = (idx[:, None] * cfg.B + torch.arange(cfg.B)).reshape(-1)
    inside = pos < cfg.d
    rows = []
    patterns = ["unstructured"] + (["block4", "2:4"] if cfg.B % 4 == 0 and cfg.d % 4 == 0 else [])
    for name in patterns:
        pattern = parse_pattern(name)
        pruned = torch.rand(cfg.d, generator=gen, device=device) < 0.3
        if pattern.kind == "block":
            pruned = pruned[::4].repeat_interleave(4)
        if pattern.is_nm:
            pruned = torch.zeros(cfg.d, dtype=torch.bool, device=device)
        out = st.obs_scores_triton(w, finv, pattern, pruned)
        w_s = padded_blocks(w, cfg.nb, cfg.B)[di].reshape(-1).cpu()
        p_s = padded_blocks(pruned, cfg.nb, cfg.B)[di].reshape(-1).cpu()
        ref = ops.obs_scores_ref(w_s, f_s, pattern, p_s)
        g = pattern.group_size  # groups never straddle blocks: every g-th sampled position starts one
        got = out[(pos[inside][::g] // g).to(device)].cpu()
        ref = ref[inside[::g]]
        finite = torch.isfinite(ref)
        err = rel_err(got[finite], ref[finite])
        exact_inf = bool(torch.equal(got[~finite], ref[~finite].float()))
        ms = bench_ms(lambda: st.obs_scores_triton(w, finv, pattern, pruned), device)
        rows.append({"d": cfg.d, "B": cfg.B, "op": "obs_scores", "pattern": name, "ms": ms, "rel_err": err,
                     "passed": err < 2e-4 and exact_inf, "vs_read_finv": ms / read_ms if read_ms else None})
        # the same scores writing the factors the "obs" update takes (checked equal to the scores above)
        same = bool(torch.equal(st.obs_scores_triton(w, finv, pattern, pruned, return_factors=True)[0], out))
        ms = bench_ms(lambda: st.obs_scores_triton(w, finv, pattern, pruned, return_factors=True), device)
        rows.append({"d": cfg.d, "B": cfg.B, "op": "obs_scores+factors", "pattern": name, "ms": ms, "rel_err": err,
                     "passed": err < 2e-4 and exact_inf and same, "vs_read_finv": ms / read_ms if read_ms else None})
    updates = [("unstructured", "obs"), ("unstructured", "joint")]
    if "block4" in patterns:
        updates += [("block4", "obs"), ("2:4", "obs")]
    for name, update in updates:
        pattern = parse_pattern(name)
        if pattern.is_nm:
            new = nm_mask(cfg.d, device, gen)
        elif pattern.kind == "block":
            new = (torch.rand(cfg.d // 4, generator=gen, device=device) < 0.5).repeat_interleave(4)
        else:
            new = torch.rand(cfg.d, generator=gen, device=device) < 0.5
        w_s = padded_blocks(w, cfg.nb, cfg.B)[di].reshape(-1).cpu()
        m_s = padded_blocks(new, cfg.nb, cfg.B)[di].reshape(-1).cpu()
        ref = ops.obs_update_ref(w_s, f_s, m_s, pattern, update)[inside]
        work = w.clone()
        ut.obs_update_triton(work, finv, new, pattern, update)
        err = rel_err(work[pos[inside].to(device)], ref)
        ms = bench_ms(lambda: ut.obs_update_triton(work, finv, new, pattern, update), device)
        rows.append({"d": cfg.d, "B": cfg.B, "op": "obs_update", "pattern": name, "update": update, "ms": ms,
                     "rel_err": err, "passed": err < 2e-3, "vs_read_finv": ms / read_ms if read_ms else None})
        if update == "obs":  # from scoring's factors: the gather of v and one matvec pass, no solve
            factors = st.obs_scores_triton(w, finv, pattern, None, return_factors=True)[1]
            work = w.clone()
            ops.obs_update(work, finv, new, pattern, "obs", factors=factors, backend="triton")
            err = rel_err(work[pos[inside].to(device)], ref)
            ms = bench_ms(lambda: ops.obs_update(work, finv, new, pattern, "obs", factors=factors, backend="triton"), device)
            rows.append({"d": cfg.d, "B": cfg.B, "op": "obs_update(factors)", "pattern": name, "update": update, "ms": ms,
                         "rel_err": err, "passed": err < 2e-3, "vs_read_finv": ms / read_ms if read_ms else None})
            del factors
        del work
    if not args.no_sequential:
        rows.append(sequential_row(cfg, finv, w, idx, read_ms, ops, parse_pattern, device))
    return rows


def sequential_row(cfg: Config, finv, w, idx, read_ms, ops, parse_pattern, device) -> dict:
    """Time ops.sequential_order (SPEC §2d, Triton, unstructured; B dependent steps per block
    in registers) against one read of F⁻¹; check sampled whole blocks against the float64 oracle
    (identical orders, and the cumulative losses where they are)."""
    from obert_kernels.ops.blocks import padded_blocks

    start = time.perf_counter()
    order, cum = ops.sequential_order(w, finv, "unstructured", backend="triton")
    first_ms = 1e3 * (time.perf_counter() - start)  # --dry-run's time (the interpreter: one call is enough)
    full = idx[idx < cfg.d // cfg.B]  # whole blocks only: the oracle would take padding as weights
    ref_o, ref_c = ops.sequential_order_ref(padded_blocks(w, cfg.nb, cfg.B)[full.to(device)].reshape(-1).cpu(),
                                            finv[full.to(device)].cpu(), parse_pattern("unstructured"))
    same = (order[full.to(device)].cpu() == ref_o).all(1)
    err = rel_err(cum[full.to(device)].cpu()[same], ref_c[same]) if bool(same.any()) else float("inf")
    ms = first_ms if device == "cpu" else bench_ms(lambda: ops.sequential_order(w, finv, "unstructured", backend="triton"), device)
    return {"d": cfg.d, "B": cfg.B, "op": "sequential_order", "pattern": "unstructured", "ms": ms, "rel_err": err,
            "identical_orders": f"{int(same.sum())}/{len(full)}",
            "passed": err < 2e-4 and int(same.sum()) >= 0.9 * len(full), "vs_read_finv": ms / read_ms if read_ms else None}


# ---- report ----------------------------------------------------------------------------------------
def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def markdown(record: dict) -> str:
    env, ceil = record["environment"], record["ceilings"]
    lines = [f"# Triton backend on {env['device']} ({env['date']})", "",
             f"torch {env['torch']}, triton {env['triton']}, Python {env['python']}, CUDA {env.get('cuda')}; "
             f"command: `{env['command']}`", "",
             f"Measured ceilings: memory bandwidth {fmt(ceil.get('bandwidth_gbps'), '.0f')} GB/s (D2D copy), "
             f"FP32 FMA {fmt(ceil.get('fma_tflops'), '.1f')} TFLOP/s (fp32 matmul, TF32 off).", "",
             "## Fisher build (per gradient; SPEC §5 useful flops 4·d·B per gradient)", "",
             "rel err: vs float64 after one chunk at full size (sampled blocks); err/naive: the same over the naive "
             "update's; m: err/naive after m gradients on 256 blocks (SPEC §4 asks ≤ ~2).", "",
             "| d | B | k | method | ms/grad | TFLOP/s | % FMA | GB/s | % BW | vs naive | rel err | err/naive | m: err/naive |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    checks = {(c["d"], c["B"], c["k"]): c for c in record["checks"]}
    for r in record["fisher"]:
        if "error" in r:
            lines.append(f"| {r['d']:.3g} | {r['B']} | {r['k']} | {r['method']} G={r['G']} w={r['num_warps']} | "
                         f"{r['error']} ||||||||||")
            continue
        c = checks.get((r["d"], r["B"], r["k"]), {})
        method = r["method"] + (f" (G={r['G']}, {r['num_warps']}w)" if "G" in r else "")
        err, ratio, m_ratio = (c.get("rel_err"), c.get("err_vs_naive"), c.get("m_err_vs_naive")) \
            if r["method"].startswith("triton") else \
            (c.get("rel_err_direct"), c.get("direct_vs_naive"), c.get("m_direct_vs_naive")) if r["method"] == "direct" else \
            (c.get("rel_err_naive"), 1.0, 1.0) if r["method"] == "naive" else (None, None, None)
        frac = r.get("fma_fraction")
        bwf = r.get("bw_fraction")
        lines.append(f"| {r['d']:.3g} | {r['B']} | {r['k']} | {method} | {r['ms_per_grad']:.4f} | {r['tflops']:.2f} | "
                     f"{fmt(frac and 100 * frac, '.0f')} | {fmt(r.get('gbps'), '.0f')} | {fmt(bwf and 100 * bwf, '.0f')} | "
                     f"{fmt(r.get('vs_naive'), '.1f')}× | {fmt(err, '.1e')} | {fmt(ratio, '.2f')} | {fmt(m_ratio, '.2f')} |")
    lines += ["", "## Scoring and update (ratio to reading F⁻¹ once at the measured bandwidth)", "",
              "| d | B | op | pattern | update | ms | × read F⁻¹ | rel err | checked |", "|---:|---:|---|---|---|---:|---:|---:|---|"]
    for r in record["scores_update"]:
        lines.append(f"| {r['d']:.3g} | {r['B']} | {r['op']} | {r['pattern']} | {r.get('update', '-')} | {r['ms']:.3f} | "
                     f"{fmt(r.get('vs_read_finv'))} | {r['rel_err']:.1e} | {'ok' if r['passed'] else 'FAILED'} |")
    if record["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- d={s['d']:.3g} B={s['B']} k={s['k']}: {s['why']}" for s in record["skipped"]]
    lines += ["", "## Targets (issue 3, H100)", ""] + [f"- {t}" for t in record["targets"]]
    return "\n".join(lines) + "\n"


def target_lines(record: dict) -> list[str]:
    out = []
    for r in record["fisher"]:
        if r["method"] == "triton" and r["d"] == 85_000_000 and r["B"] == 50:
            out.append(f"Woodbury d=8.5e7 B=50 k={r['k']}: {fmt(r.get('vs_naive'), '.1f')}× naive "
                       f"(target ≥ {TARGETS['woodbury_vs_naive']:.0f}×), "
                       f"{fmt(r.get('fma_fraction') and 100 * r['fma_fraction'], '.0f')}% of the FMA ceiling "
                       f"(target ≥ {100 * TARGETS['woodbury_fma_fraction']:.0f}%)")
    worst = {}
    for r in record["scores_update"]:
        key = (r["op"], r["pattern"], r.get("update"))
        if r.get("vs_read_finv") is not None and r["d"] == max(x["d"] for x in record["scores_update"]):
            worst[key] = max(worst.get(key, 0), r["vs_read_finv"])
    for (op, pattern, update), ratio in sorted(worst.items()):
        out.append(f"{op} {pattern}{' ' + update if update else ''} at the largest d: {ratio:.2f}× the time to read "
                   f"F⁻¹ once (target ≤ {TARGETS['read_ratio']:.0f}×)")
    return out or ["no config of the targets' size was run"]


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", default=DEFAULT_D, help=f"weights, comma-separated (default {DEFAULT_D})")
    ap.add_argument("--block-sizes", default=DEFAULT_B, help=f"B values (default {DEFAULT_B})")
    ap.add_argument("--chunks", default=DEFAULT_K, help=f"k values (default {DEFAULT_K})")
    ap.add_argument("--quick", action="store_true", help="d=1e6,8.5e7; B=50; k=32 (overrides the three above)")
    ap.add_argument("--methods", default="triton,naive,direct",
                    help="of triton,naive,direct,torch (torch's rank-k temporaries need ~8·k·d bytes more)")
    ap.add_argument("--no-scores", action="store_true", help="skip the scoring/update part")
    ap.add_argument("--no-sequential", action="store_true", help="skip the sequential_order timing (SPEC §2d)")
    ap.add_argument("--tune", action="store_true", help="also time the Woodbury kernel at other (G, num_warps)")
    ap.add_argument("--num-grads", type=int, default=1024, help="m: the 1/m of the Fisher; amortises the direct inverse")
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--naive-chunk", type=int, default=4, help="gradients per timed naive call")
    ap.add_argument("--check-blocks", type=int, default=256, help="blocks checked against float64 per config")
    ap.add_argument("--mem-fraction", type=float, default=0.9, help="skip configs needing more of the free memory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="results folder (e.g. bench/results/); JSON + markdown")
    ap.add_argument("--dry-run", action="store_true",
                    help="prove the plumbing on the CPU: TRITON_INTERPRET=1, d=600,1500, B=12,50, k=4, m=16")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.block_sizes, args.chunks = "1e6,8.5e7", "50", "32"
    if args.dry_run:  # tiny sizes, unless given (bench/gpu_suite.py --dry-run runs one config)
        if (args.d, args.block_sizes, args.chunks) == (DEFAULT_D, DEFAULT_B, DEFAULT_K):
            args.d, args.block_sizes, args.chunks = "600,1500", "12,50", "4"
        args.num_grads, args.check_blocks = 16, 16
    args.methods = set(args.methods.split(","))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before obert_kernels decorates its kernels
    sys.path.insert(0, str(ROOT))
    import torch
    import triton
    from tqdm import tqdm

    from obert_kernels import ops, parse_pattern
    from obert_kernels.ops.backends.triton import scores as st
    from obert_kernels.ops.backends.triton import update as ut
    from obert_kernels.ops.backends.triton import woodbury as wt

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (use --dry-run to check the plumbing on the CPU)")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU (dry run, Triton interpreter) {platform.machine()}"
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if device == "cuda" else 1 << 20
    env = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "cuda": torch.version.cuda, "date": datetime.date.today().isoformat(),
           "command": "python bench/bench_triton_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(f"{name}: torch {env['torch']}, triton {env['triton']}", flush=True)
    ceil = {"bandwidth_gbps": measure_bandwidth(device), "fma_tflops": measure_fma_ceiling(device)}
    print(f"ceilings: {ceil['bandwidth_gbps']:.0f} GB/s, {ceil['fma_tflops']:.1f} TFLOP/s fp32 FMA", flush=True)
    record = {"environment": env, "ceilings": ceil, "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                                                             for k, v in vars(args).items()},
              "checks": [], "fisher": [], "scores_update": [], "skipped": []}
    configs = enumerate_configs(parse_list(args.d), parse_list(args.block_sizes), parse_list(args.chunks))
    scored = set()
    for cfg in tqdm(configs, desc="configs", disable=None):
        n_rot = rotation_count(cfg, l2)
        need = memory_needed(cfg, n_rot)
        free = torch.cuda.mem_get_info()[0] if device == "cuda" else 1 << 40
        while need > args.mem_fraction * free and n_rot > 1:
            n_rot -= 1
            need = memory_needed(cfg, n_rot)
        if need > args.mem_fraction * free:
            why = (f"needs {need / 1e9:.1f} GB (F⁻¹ {finv_bytes(cfg) / 1e9:.1f} GB + a {chunk_bytes(cfg) / 1e9:.1f} GB "
                   f"chunk), {free / 1e9:.1f} GB free")
            record["skipped"].append({"d": cfg.d, "B": cfg.B, "k": cfg.k, "why": why})
            tqdm.write(f"skip d={cfg.d:.3g} B={cfg.B} k={cfg.k}: {why}")
            continue
        chunks = make_chunks(cfg, n_rot, device, args.seed)
        check = {"d": cfg.d, "B": cfg.B, "k": cfg.k, "rotated_chunks": n_rot,
                 **check_fisher(cfg, chunks[0], sample_blocks(cfg, args.check_blocks, args.seed), args, ops, wt)}
        record["checks"].append(check)
        if not check["passed"]:
            tqdm.write(f"FAILED check d={cfg.d:.3g} B={cfg.B} k={cfg.k}: {check}; not timed")
            continue
        rows = fisher_rows(cfg, chunks, args, ceil, ops, wt, device)
        record["fisher"] += rows
        for r in rows:
            if "ms_per_grad" in r:
                tqdm.write(f"d={cfg.d:.3g} B={cfg.B} k={cfg.k} {r['method']:<12} {r['ms_per_grad']:.4f} ms/grad "
                           f"{r['tflops']:.2f} TFLOP/s  vs naive {fmt(r.get('vs_naive'), '.1f')}x")
        if not args.no_scores and (cfg.d, cfg.B) not in scored:
            scored.add((cfg.d, cfg.B))
            finv = ops.init_finv(cfg.nb, cfg.B, args.damp, device=device)
            wt.woodbury_update_triton(finv, chunks[0], args.num_grads)
            del chunks
            rows = score_update_rows(cfg, finv, args, ceil, ops, st, ut, parse_pattern, device)
            record["scores_update"] += rows
            for r in rows:
                tqdm.write(f"d={cfg.d:.3g} B={cfg.B} {r['op']} {r['pattern']} {r.get('update', '')}: {r['ms']:.3f} ms, "
                           f"{fmt(r.get('vs_read_finv'))}x read F⁻¹, err {r['rel_err']:.1e}")
            del finv
        else:
            del chunks
        if device == "cuda":
            torch.cuda.empty_cache()
    record["targets"] = target_lines(record)
    print("\n".join(record["targets"]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"triton-{'dryrun-cpu' if args.dry_run else 'gpu-' + device_slug(name)}-{env['date']}"
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1, default=str))
        (args.out / f"{stem}.md").write_text(markdown(record))
        print(f"wrote {args.out / stem}.json and .md")
    return record


if __name__ == "__main__":
    main()
