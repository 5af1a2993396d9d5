"""Compile the Triton kernels for an H100 (sm_90a) without a GPU and report what the code costs.

For each kernel at the launch settings the launchers use (or --sweep alternatives): registers
per thread, spills, and the instruction mix of its hottest loop in the SASS (ptxas and
cuobjdump ship with Triton). For the Woodbury chunk loop this gives the fraction of issued
instructions that are useful FMAs — an upper bound on the share of the FP32 FMA ceiling the
kernel can reach when issue-bound (one warp instruction per scheduler per cycle and FFMA at
full rate on sm_90), before latency, occupancy and memory are counted. It is a static
estimate, not a timing: bench/bench_triton_gpu.py measures on a GPU.

    python bench/triton_static_report.py [--sweep] [--out bench/results/]

With --out, writes triton-static-sm90-triton<version>-<date>.txt (what it prints, under a
header naming the command, versions and bundled tools) and .json.

Needs triton's CUDA backend (the pip wheel has it); no GPU, no CUDA driver.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import warnings

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from obert_kernels.ops.backends.triton import scores as scores_triton, update as update_triton, woodbury as woodbury_triton  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
NV_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _tool(*names: str) -> str:
    for name in names:
        path = os.path.join(NV_BIN, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"none of {names} in {NV_BIN}")


def compile_kernel(fn, types: dict, consts: dict, num_warps: int):
    """types: arg -> triton type string; consts: arg -> value (as the launcher's constexprs,
    plus the integer arguments that are 1 at run time, which Triton specialises the same way)."""
    signature = {}
    constexprs = {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
            constexprs[(i,)] = consts[name]
        else:
            signature[name] = types[name]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps})


def resources(kernel) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    ptxas = _tool("ptxas-blackwell", "ptxas")
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stderr)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(spill.group(1)) if spill else None,
            "spill_load_bytes": int(spill.group(2)) if spill else None,
            "shared_bytes": kernel.metadata.shared}


def hottest_loop(kernel) -> dict:
    """Instruction mix of the longest loop (backward branch) in the SASS."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    text = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    code = []
    for line in text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?);", line)
        if m:
            code.append((int(m.group(1), 16), m.group(2)))
    best = None
    for addr, ins in code:
        m = re.search(r"BRA\s.*?0x([0-9a-f]+)", ins)
        if m and int(m.group(1), 16) < addr:
            span = (int(m.group(1), 16), addr)
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    body = [ins for addr, ins in code if best and best[0] <= addr <= best[1]]
    mix = collections.Counter((ins.split()[1] if ins.startswith("@") else ins.split()[0]).split(".")[0] for ins in body)
    return {"instructions": len(body), "mix": dict(mix.most_common())}


I32, I64, F32 = "i32", "i64", "fp32"


def woodbury_case(B: int, G: int | None = None, warps: int | None = None) -> dict:
    P, g0, w0 = woodbury_triton.woodbury_launch_config(B)
    default = G is None and warps is None
    G, warps = G or g0, warps or w0
    types = dict(finv_ptr="*fp32", grads_ptr="*fp32", num_blocks=I32, num_new=I32, B=I32, d_limit=I64,
                 s_fb=I32, s_fr=I32, s_block=I32, s_grad=I32, num_grads=F32)
    k = compile_kernel(woodbury_triton.woodbury_chunk_kernel, types,
                       dict(P=P, G=G, s_fc=1, s_weight=1), warps)
    loop = hottest_loop(k)
    useful = 2 * G * B * B / (32 * warps)  # FMAs per thread per gradient that the math needs (SPEC §5: 4·B² flops)
    fp = sum(loop["mix"].get(op, 0) for op in ("FFMA", "FMUL", "FADD"))
    return {"kernel": "woodbury_chunk", "B": B, "P": P, "G": G, "num_warps": warps, "default": default, **resources(k),
            "loop": loop, "fp32_ops_per_gradient": fp, "useful_fma_per_thread_per_gradient": useful,
            "useful_fma_per_issued_instruction": round(useful / loop["instructions"], 3)}


def other_cases(B: int) -> list[dict]:
    P = triton.next_power_of_2(B)
    out = []
    acc = compile_kernel(woodbury_triton.fisher_accumulate_kernel,
                         dict(fisher_ptr="*fp32", grads_ptr="*fp32", num_new=I32, B=I32, d_limit=I64, s_fb=I32,
                              s_fr=I32, s_block=I32, s_grad=I32, inv_m=F32),
                         dict(P=max(16, P), KT=woodbury_triton.ACCUMULATE_K_TILE, s_fc=1, s_weight=1),
                         woodbury_triton.warps_for(max(16, P) ** 2))
    out.append({"kernel": "fisher_accumulate", "B": B, **resources(acc), "loop": hottest_loop(acc)})
    cw = woodbury_triton.column_warps(P)
    inv = compile_kernel(woodbury_triton.fisher_invert_kernel,
                         dict(fisher_ptr="*fp32", status_ptr="*i32", B=I32, s_fb=I32, s_fr=I32, damp=F32),
                         dict(P=P, s_fc=1), cw)
    out.append({"kernel": "fisher_invert", "B": B, **resources(inv), "loop": hottest_loop(inv)})
    upd_types = dict(w_ptr="*fp32", finv_ptr="*fp32", mask_ptr="*u8", status_ptr="*i32", d=I64, B=I32,
                     s_fb=I32, s_fr=I32)
    obs_types = {**{k: v for k, v in upd_types.items() if k != "status_ptr"}, "v_ptr": "*fp32"}
    for has_v, name in ((False, "update_obs"), (True, "obs_apply")):
        obs = compile_kernel(update_triton.update_obs_kernel, obs_types, dict(P=P, s_fc=1, HAS_V=has_v), cw)
        out.append({"kernel": name, "B": B, **resources(obs)})
    joint = compile_kernel(update_triton.update_joint_kernel, upd_types, dict(P=P, s_fc=1), cw)
    out.append({"kernel": "update_joint", "B": B, **resources(joint), "loop": hottest_loop(joint)})
    if B % 4 == 0:
        NGP = triton.next_power_of_2(-(-B // 4))
        grp = compile_kernel(update_triton.update_obs_grouped_kernel, upd_types,
                             dict(M=4, P=P, NGP=NGP, MP=4, s_fc=1), cw)
        out.append({"kernel": "update_obs_grouped(M=4)", "B": B, **resources(grp)})
    return out


def score_cases() -> list[dict]:
    out = []
    for factors in (False, True):
        tag = " +factors" if factors else ""
        k = compile_kernel(scores_triton.scores_unstructured_kernel,
                           dict(w_ptr="*fp32", finv_ptr="*fp32", pruned_ptr="*u8", out_ptr="*fp32", factors_ptr="*fp32",
                                d=I64, B=I32, s_fb=I32, s_fd=I32),
                           dict(HAS_PRUNED=True, RETURN_FACTORS=factors, TILE=scores_triton.SCORE_TILE), 4)
        out.append({"kernel": f"scores_unstructured{tag}", **resources(k)})
        for name, M, N, nm in (("block4", 4, 4, False), ("2:4", 4, 2, True)):
            TG = max(1, min(scores_triton.GROUP_TILE, 4096 // 16))
            k = compile_kernel(scores_triton.scores_grouped_kernel,
                               dict(w_ptr="*fp32", finv_ptr="*fp32", pruned_ptr="*u8", members_ptr="*i32", out_ptr="*fp32",
                                    factors_ptr="*fp32", status_ptr="*i32", num_groups=I64, B=I32, num_subsets=I32,
                                    s_fb=I32, s_fr=I32),
                               dict(M=M, N=N, IS_NM=nm, HAS_PRUNED=True, RETURN_FACTORS=factors, MP=4, TG=TG, s_fc=1), 4)
            out.append({"kernel": f"scores_{name}{tag}", **resources(k), "loop": hottest_loop(k)})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", action="store_true", help="also compile the Woodbury kernel at other (G, num_warps)")
    ap.add_argument("--blocks", default="32,50,64,128", help="block sizes B, comma-separated")
    ap.add_argument("--out", help="folder for a JSON + markdown record (e.g. bench/results/)")
    args = ap.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",")]
    rows = []
    for B in blocks:
        default = woodbury_case(B)
        rows.append(default)
        if args.sweep:
            P = triton.next_power_of_2(B)
            for G, warps in ((1, 1), (1, 2), (1, 4), (1, 8), (2, 2), (2, 4), (4, 4)):
                if (G, warps) != (default["G"], default["num_warps"]) and G * P <= 256:
                    rows.append(woodbury_case(B, G, warps))
    lines = ["Woodbury chunk loop, per gradient (sm_90a SASS; static):",
             f"{'B':>4} {'P':>4} {'G':>2} {'warps':>5} {'regs':>4} {'spill st/ld':>11} {'loop instr':>10} "
             f"{'FFMA':>5} {'FMUL':>5} {'FADD':>5} {'SHFL':>5} {'LDS':>4} {'BAR':>4} {'LDL+STL':>7} {'useful FMA/instr':>16}"]
    for r in rows:
        mix = r["loop"]["mix"]
        lines.append(f"{r['B']:>4} {r['P']:>4} {r['G']:>2} {r['num_warps']:>5} {r['registers']:>4} "
                     f"{r['spill_store_bytes']:>5}/{r['spill_load_bytes']:<5} {r['loop']['instructions']:>10} "
                     f"{mix.get('FFMA', 0):>5} {mix.get('FMUL', 0):>5} {mix.get('FADD', 0):>5} {mix.get('SHFL', 0):>5} "
                     f"{mix.get('LDS', 0):>4} {mix.get('BAR', 0):>4} {mix.get('LDL', 0) + mix.get('STL', 0):>7} "
                     f"{r['useful_fma_per_issued_instruction']:>16}{'  (default)' if r.get('default') else ''}")
    others = [c for B in blocks for c in other_cases(B)] + score_cases()
    lines.append("\nOther kernels (registers, spills; they compile for sm_90a):")
    for r in others:
        loop = f", hottest loop {r['loop']['instructions']} instructions" if "loop" in r else ""
        lines.append(f"  {r['kernel']:<28} B={r.get('B', '-')!s:>4}: {r['registers']} registers, "
                     f"spills {r['spill_store_bytes']}/{r['spill_load_bytes']} bytes{loop}")
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        tools = tool_versions()
        record = {"what": "static SASS analysis (compiled, not run)", "target": "sm_90a", "date": stamp,
                  "triton": triton.__version__, "python": platform.python_version(), "tools": tools,
                  "woodbury": rows, "others": others}
        stem = os.path.join(args.out, f"triton-static-sm90-triton{triton.__version__}-{stamp}")
        with open(stem + ".json", "w") as f:
            json.dump(record, f, indent=1)
        command = "python " + " ".join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:]))
        head = (f"# {command} ; {stamp}, triton {triton.__version__} (bundled "
                f"{', '.join(f'{k} {v}' for k, v in tools.items())}), python {platform.python_version()}, compiled for "
                "sm_90a on a CPU-only machine: a static SASS analysis, nothing was run on a GPU")
        with open(stem + ".txt", "w") as f:
            f.write(head + "\n" + "\n".join(lines) + "\n")
        print(f"\nwrote {stem}.txt and .json")


def tool_versions() -> dict:
    """Release of each bundled tool the report runs (ptxas, ptxas-blackwell, cuobjdump)."""
    out = {}
    for name in ("ptxas", "ptxas-blackwell", "cuobjdump"):
        path = os.path.join(NV_BIN, name)
        if os.path.exists(path):
            text = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            m = re.search(r"release [\d.]+, V([\d.]+)", text)
            out[name] = m.group(1) if m else "?"
    return out

if __name__ == "__main__":
    main()
