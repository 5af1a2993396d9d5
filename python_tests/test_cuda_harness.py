"""The CUDA kernels' per-block programs, run on the CPU against the float64 oracle.

csrc/obk_math.cuh holds what each kernel computes — woodbury_program (per-thread rows,
index maps, shared-memory staging of gradients, the partial-sum layout), score_group,
update_program (including the warp-parallel Cholesky of update="joint") — as
__host__ __device__ code. csrc/host_harness.cpp runs exactly that code with CPU runners
standing in for threads, barriers and the warp-shuffle reduction; this file compiles it
with the host C++ compiler and checks it like any backend (SPEC §4).

What this does NOT run: the __global__ wrappers and launch code in csrc/*.cu, barrier
placement, the shuffle reduction, the GPU's rounding. Those run in python_tests/ops/ on a GPU.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import RTOL, naive_fp32_error, random_finv, random_grads, random_pruned, rel_err, shape_for, spec_tolerance

from obert_kernels import ops, parse_pattern

CSRC = Path(__file__).resolve().parents[1] / "csrc"
P = ctypes.c_void_p
LL = ctypes.c_longlong


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler (c++/g++/clang++) to build csrc/host_harness.cpp")
    out = tmp_path_factory.mktemp("harness") / "obk_harness.so"
    cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wno-unknown-pragmas", f"-I{CSRC}",
           str(CSRC / "host_harness.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(out))
    lib.obk_host_woodbury.argtypes = [P, LL, ctypes.c_int, ctypes.c_int, P, LL, LL, LL, ctypes.c_int, ctypes.c_double, ctypes.c_int]
    lib.obk_host_woodbury.restype = ctypes.c_int
    lib.obk_host_woodbury_config.argtypes = [ctypes.c_int, ctypes.c_int, P]
    lib.obk_host_segment_sum.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, P, P]
    lib.obk_host_scores.argtypes = [P, P, P, ctypes.c_int, ctypes.c_int, LL, ctypes.c_int, ctypes.c_int, P, ctypes.c_int, P]
    lib.obk_host_update.argtypes = [P, P, P, LL, ctypes.c_int, ctypes.c_int, LL, ctypes.c_int, ctypes.c_int]
    lib.obk_host_update.restype = ctypes.c_int
    return lib


def config(lib, B, rows=0):
    out = (LL * 7)()
    lib.obk_host_woodbury_config(B, rows, out)
    return dict(zip(["BP", "R", "T", "blocks_per_cta", "threads", "max_warps", "smem_floats"], list(out)))


def host_woodbury(lib, finv, grads, num_grads, rows=0):
    """Run woodbury_program on finv (dense or packed, float32) with a (k, d) or (nb, k, B) chunk."""
    nb, B = ops.checks.block_dims(finv)
    g = grads.float().contiguous()
    if g.dim() == 3:
        k, sb, sk, dv = g.shape[1], g.stride(0), g.stride(1), nb * B
    else:
        k, sb, sk, dv = g.shape[0], B, g.stride(0), g.shape[1]
    rc = lib.obk_host_woodbury(finv.data_ptr(), nb, B, int(ops.packed.is_packed(finv)), g.data_ptr(), sb, sk, dv, k,
                               float(num_grads), rows)
    assert rc == 0
    return finv


# (d, B, m, k, rows): R = 1 and R = 2 rows per thread, B not a multiple of 4, a block spread
# over 2 and 4 warps (B = 40 with R = 1, B = 100: the partial-sum layout), k not a multiple
# of the 8 gradients staged at a time.
SHAPES = [(233, 10, 37, 7, 0), (1000, 50, 64, 16, 0), (1000, 50, 64, 16, 1), (97, 13, 29, 29, 0), (410, 40, 45, 11, 0),
          (410, 40, 45, 11, 1), (350, 100, 30, 9, 0), (130, 64, 20, 3, 0), (130, 64, 20, 3, 1), (7, 3, 5, 5, 0)]


@pytest.mark.parametrize("d,B,m,k,rows", SHAPES)
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("grad_layout", ["rows", "block-major"])
def test_woodbury_program_within_spec_tolerance(harness, seed, d, B, m, k, rows, layout, grad_layout):
    damp = 1e-2
    grads = random_grads(m, d)
    ref = ops.fisher_inverse_ref(grads, B, damp)
    nb = ref.shape[0]
    finv = ops.init_finv(nb, B, damp)
    if layout == "packed":
        finv = ops.pack_upper(finv)
    for start in range(0, m, k):
        chunk = grads[start : start + k]
        if grad_layout == "block-major":
            chunk = torch.nn.functional.pad(chunk, (0, nb * B - d)).view(-1, nb, B).permute(1, 0, 2).contiguous()
        host_woodbury(harness, finv, chunk, m, rows)
    dense = ops.unpack_upper(finv) if layout == "packed" else finv
    assert torch.equal(dense, dense.transpose(1, 2))  # written symmetric by construction
    tol = spec_tolerance(naive_fp32_error(grads, B, damp, ref))
    assert rel_err(dense, ref) <= tol
    assert rel_err(ops.init_finv(nb, B, damp), ref) > 100 * tol  # a wrong F⁻¹ fails


def test_woodbury_config_covers_every_block_size(harness):
    """Every B in 1..128 has an instantiation (R = 2 too for 32 < B ≤ 64); threads stay
    ≤ 256 (the kernel's launch bound), smem ≤ 48 KiB (no opt-in)."""
    for B in range(1, 129):
        for rows in (0, 1, 2) if 32 < B <= 64 else (0, 1):
            c = config(harness, B, rows)
            assert c["R"] == (rows or (2 if 32 < B <= 64 else 1))
            assert c["BP"] >= B and c["BP"] % 4 == 0 and c["R"] * c["T"] >= B
            assert c["threads"] <= 256 and c["threads"] % 32 == 0 and c["blocks_per_cta"] * c["T"] <= c["threads"]
            assert c["smem_floats"] * 4 <= 48 * 1024
            g = torch.zeros(1, B)
            f = ops.init_finv(1, B, 1.0)
            assert harness.obk_host_woodbury(f.data_ptr(), 1, B, 0, g.data_ptr(), B, B, B, 1, 1.0, rows) == 0
    f = ops.init_finv(1, 129, 1.0)
    assert harness.obk_host_woodbury(f.data_ptr(), 1, 129, 0, f.data_ptr(), 129, 129, 129, 1, 1.0, 0) == -1
    f = ops.init_finv(1, 20, 1.0)
    assert harness.obk_host_woodbury(f.data_ptr(), 1, 20, 0, f.data_ptr(), 20, 20, 20, 1, 1.0, 2) == -1


@pytest.mark.parametrize("B,rows", [(1, 0), (3, 0), (13, 0), (31, 0), (32, 0), (33, 0), (40, 1), (50, 0), (50, 1),
                                    (64, 0), (65, 0), (100, 0), (128, 0)])
def test_segmented_warp_sum_layout(harness, seed, B, rows):
    """The shuffle-down tree's predicates: every (block, warp) slot the block's threads touch
    holds that warp's share of the block's partials; the other slots are never written."""
    c = config(harness, B, rows)
    T, Pb, W, threads = c["T"], c["blocks_per_cta"], c["max_warps"], c["threads"]
    values = torch.randn(threads)
    dst = torch.full((Pb * W,), float("nan"))
    harness.obk_host_segment_sum(T, Pb, W, threads, values.data_ptr(), dst.data_ptr())
    for blk in range(Pb):
        tids = torch.arange(blk * T, blk * T + T)
        warps = (tids // 32).unique()
        for i, w in enumerate(warps.tolist()):
            share = values[tids[tids // 32 == w]].double().sum()
            assert abs(dst[blk * W + i].item() - share.item()) < 1e-5 * (1 + share.abs().item())
        assert torch.isnan(dst[blk * W + len(warps) : (blk + 1) * W]).all()  # slots past the block's warps unused


def test_woodbury_program_small_damp_realistic_scale(harness, seed):
    B, m, d = 50, 128, 400
    grads = random_grads(m, d, scale=1e-3)
    ref = ops.fisher_inverse_ref(grads, B, 1e-7)
    finv = ops.pack_upper(ops.init_finv(ref.shape[0], B, 1e-7))
    for start in range(0, m, 32):
        host_woodbury(harness, finv, grads[start : start + 32], m)
    assert rel_err(ops.unpack_upper(finv), ref) <= spec_tolerance(naive_fp32_error(grads, B, 1e-7, ref))


def subset_bits(pattern):
    return torch.tensor([sum(1 << i for i in s) for s in pattern.subsets], dtype=torch.int32)


@pytest.mark.parametrize("pattern", ["unstructured", "block4", "2:4", "1:4", "3:8"])
@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("with_pruned", [False, True])
def test_score_group_matches_oracle(harness, seed, pattern, layout, with_pruned):
    pat = parse_pattern(pattern)
    d, B = shape_for(pattern)
    finv64 = random_finv(d, B)
    finv = finv64.float()
    if layout == "packed":
        finv = ops.pack_upper(finv)
    w = torch.randn(d)
    pruned = random_pruned(d, pattern, 0.25) if with_pruned else None
    ref = ops.obs_scores_ref(w, finv64, pat, pruned)
    out = torch.empty(ref.shape, dtype=torch.float32)
    bits = subset_bits(pat) if pat.is_nm else torch.zeros(1, dtype=torch.int32)
    p = pruned.to(torch.uint8) if pruned is not None else None
    harness.obk_host_scores(w.data_ptr(), None if p is None else p.data_ptr(), finv.data_ptr(), B,
                            int(layout == "packed"), d, pat.group_size, pat.n_prune, bits.data_ptr(), bits.numel(), out.data_ptr())
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite)
    assert torch.equal(out[~finite], ref[~finite].float())
    assert rel_err(out[finite], ref[finite]) < RTOL[torch.float32]


def test_score_group_falls_back_when_not_positive_definite(harness):
    """A 4×4 diagonal block that is indefinite in float32: LU gives ½ wᵀA⁻¹w like torch's general solve."""
    B = 4
    a = torch.tensor([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 4.0]], dtype=torch.float64)
    w = torch.tensor([0.5, -1.0, 2.0, 1.5])
    expected = 0.5 * w.double() @ torch.linalg.solve(a, w.double())
    out = torch.empty(1)
    f = a.float().reshape(1, B, B).contiguous()
    bits = torch.zeros(1, dtype=torch.int32)
    harness.obk_host_scores(w.data_ptr(), None, f.data_ptr(), B, 0, 4, 4, 0, bits.data_ptr(), 0, out.data_ptr())
    assert abs(out.item() - expected.item()) < 1e-5 * abs(expected.item())


@pytest.mark.parametrize("pattern", ["unstructured", "block4", "2:4", "3:8"])
@pytest.mark.parametrize("update", ["obs", "joint", "none"])
@pytest.mark.parametrize("layout", ["dense", "packed"])
def test_update_program_matches_oracle(harness, seed, pattern, update, layout):
    pat = parse_pattern(pattern)
    d, B = shape_for(pattern, block8=40)
    finv64 = random_finv(d, B)
    finv = finv64.float()
    if layout == "packed":
        finv = ops.pack_upper(finv)
    w = torch.randn(d)
    mask = random_pruned(d, pattern, 0.3)
    mask[:B] = False  # one block with nothing to prune: left exactly as it was
    ref = ops.obs_update_ref(w, finv64, mask, pat, update)
    out, mask8 = w.clone(), mask.to(torch.uint8)  # keep the uint8 copy alive: ctypes takes its address
    failed = harness.obk_host_update(out.data_ptr(), mask8.data_ptr(), finv.data_ptr(), finv.shape[0], B,
                                     int(layout == "packed"), d, pat.group_size, ops.UPDATES.index(update))
    assert failed == 0
    assert torch.equal(out[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(out[:B], w[:B])
    assert rel_err(out, ref) < RTOL[torch.float32]
    if update != "none":  # the compensation is far above the tolerance: a wrong one fails
        assert rel_err(w.masked_fill(mask, 0.0), ref) > 100 * RTOL[torch.float32]


def test_update_program_reports_indefinite_joint_system(harness):
    """F⁻¹_PP not positive definite in float32: the block is reported and left untouched."""
    B = 4
    f = torch.tensor([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]).reshape(1, B, B).contiguous()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = w.clone()
    mask8 = torch.tensor([1, 1, 0, 0], dtype=torch.uint8)
    failed = harness.obk_host_update(out.data_ptr(), mask8.data_ptr(), f.data_ptr(), 1, B, 0, 4, 1, 1)
    assert failed == 1 and torch.equal(out, w)
