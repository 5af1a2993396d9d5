"""Sequential OBS on the CPU (torch backend): the greedy pass vs ``fisher_invert`` on the same blocks.

Both are O(B³) per block: the inversion is a batched Cholesky (ops.fisher_invert), the
sequential pass (ops.sequential_order, SPEC §2d) B dependent rank-1 downdates per block. The
blocks are synthetic SPD Fishers, F = λI + GᵀG/m from m random gradients per block with
per-coordinate scales (MiniLM's 10,616,832 encoder weights at B = 32 by default); the timing
does not depend on the values. Also timed: the joint weight update of a 50% prefix selection
(what update="sequential" applies after the order), and, on a sample of blocks, agreement
with the float64 oracle (identical orders, worst relative error of the cumulative losses).

    OMP_NUM_THREADS=1 python bench/bench_sequential_cpu.py                 # 10.6M weights (minutes)
    OMP_NUM_THREADS=1 python bench/bench_sequential_cpu.py --d 1000000     # a quick look
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels import ops  # noqa: E402
from obert_kernels.core import sequential_select  # noqa: E402
from obert_kernels import parse_pattern  # noqa: E402

REQUIRES = ("cpu",)
QUICK_ARGS = ["--d", "200000"]
MINILM_WEIGHTS = 10_616_832


def synthetic_fisher(nb: int, B: int, m: int, damp: float, seed: int, chunk: int = 8192) -> torch.Tensor:
    """(nb, B, B) float32 F = λI + GᵀG/m per block, built chunk by chunk (bounded temporaries)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(nb, B, B)
    eye = torch.eye(B) * damp
    for a in range(0, nb, chunk):
        b = min(a + chunk, nb)
        scale = torch.exp(0.5 * torch.randn(b - a, 1, B, generator=gen))
        g = torch.randn(b - a, m, B, generator=gen) * scale
        torch.baddbmm(eye, g.transpose(1, 2), g, alpha=1.0 / m, out=out[a:b])
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def oracle_check(w, finv, order, cum, B: int, sample: int, seed: int) -> dict:
    """Orders and cumulative losses of ``sample`` random blocks against sequential_order_ref."""
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(finv.shape[0], generator=gen)[:sample]
    wb = w.reshape(-1, B)[idx].reshape(-1)
    ref_order, ref_cum = ops.sequential_order_ref(wb, finv[idx], parse_pattern("unstructured"))
    same = (order[idx] == ref_order).all(1)
    fin = torch.isfinite(ref_cum)
    err = ((cum[idx].double() - ref_cum).abs() / ref_cum.abs().clamp_min(1e-30))[fin].max().item()
    # where an order differs, it must be at a near-tie: the first differing step's losses agree
    return {"blocks": sample, "identical_orders": int(same.sum()), "max_rel_err_cumloss_identical_blocks":
            ((cum[idx][same].double() - ref_cum[same]).abs() / ref_cum[same].abs().clamp_min(1e-30))
            [torch.isfinite(ref_cum[same])].max().item() if bool(same.any()) else None,
            "max_rel_err_cumloss_all": err}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=MINILM_WEIGHTS, help="weights (default: MiniLM's encoder, %(default)s)")
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--num-grads", type=int, default=64, help="m of the synthetic Fisher")
    ap.add_argument("--damp", type=float, default=1e-2)
    ap.add_argument("--check-blocks", type=int, default=50, help="blocks checked against the float64 oracle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write JSON here (and the table next to it as .txt)")
    args = ap.parse_args(argv)
    B = args.block_size
    nb = -(-args.d // B)
    fisher = synthetic_fisher(nb, B, args.num_grads, args.damp, args.seed)
    finv = fisher.clone()
    t_inv, _ = timed(lambda: ops.fisher_invert(finv, 1e-12, backend="torch"))  # λ is inside F already
    del fisher
    w = torch.randn(args.d, generator=torch.Generator().manual_seed(args.seed + 2))
    t_seq, (order, cum) = timed(lambda: ops.sequential_order(w, finv, "unstructured", backend="torch"))
    pat = parse_pattern("unstructured")
    counts = sequential_select.prefix_counts(cum, int(0.5 * args.d))
    mask = sequential_select.prefix_mask(order, counts, pat, args.d)
    t_joint, _ = timed(lambda: ops.obs_update(w.clone(), finv, mask, pat, "joint", backend="torch"))
    check = oracle_check(w, finv, order, cum, B, min(args.check_blocks, nb), args.seed)
    res = {"bench": "sequential-cpu", "date": str(date.today()), "d": args.d, "B": B, "num_blocks": nb,
           "finv_bytes": finv.numel() * 4, "m": args.num_grads, "damp": args.damp,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "seconds": {"fisher_invert": t_inv, "sequential_order": t_seq, "joint_update_50pct": t_joint},
           "ratio_sequential_over_invert": t_seq / t_inv,
           "ratio_sequential_plus_joint_over_invert": (t_seq + t_joint) / t_inv, "oracle_check": check}
    text = report(res)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text(text + "\n")
    return res


def report(r: dict) -> str:
    s = r["seconds"]
    c = r["oracle_check"]
    return "\n".join([
        f"# bench/bench_sequential_cpu.py, {r['date']}, torch {r['torch']}, {r['threads']} thread(s), {r['machine']}",
        f"d={r['d']:,} B={r['B']} blocks={r['num_blocks']:,} F⁻¹ {r['finv_bytes'] / 2**30:.2f} GiB float32",
        f"fisher_invert (batched Cholesky)       {s['fisher_invert']:8.2f} s",
        f"sequential_order (greedy, B steps)     {s['sequential_order']:8.2f} s   {r['ratio_sequential_over_invert']:.2f}x invert",
        f"joint update of a 50% prefix selection {s['joint_update_50pct']:8.2f} s   "
        f"(order + update: {r['ratio_sequential_plus_joint_over_invert']:.2f}x invert)",
        f"oracle check on {c['blocks']} blocks: {c['identical_orders']} identical orders; cumulative-loss rel err "
        f"{c['max_rel_err_cumloss_identical_blocks']:.1e} (identical blocks), {c['max_rel_err_cumloss_all']:.1e} (all)",
    ])


if __name__ == "__main__":
    main()
