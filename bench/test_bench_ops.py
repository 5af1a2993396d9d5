"""One microbenchmark per op × backend present × size, plus the naive per-gradient update.

    pytest bench --benchmark-only                             # CPU: ~3 min on 2 busy cores
    pytest bench --benchmark-only --benchmark-json=ops.json   # save a run
    pytest bench --benchmark-only --benchmark-autosave        # then, later:
    pytest bench --benchmark-only --benchmark-compare         # against the last saved run

Each round gets fresh inputs (pedantic setup, untimed): the ops work in place.
``extra_info`` holds the counted work of one call (SPEC §5): ``gflop``/``gflops`` and
``gbyte``/``gbps`` (the bytes the op must move at least), computed from the mean time
(flops are not counted for the obs ops, which are memory-bound).
Sizes are B = 50, k = 32 (the pruner's defaults), d = 10^5 and 10^6 on the CPU, plus 10^7
on a GPU. A backend that cannot serve a call is skipped with its reasons; Triton runs on a
GPU only.
"""
from __future__ import annotations

import functools

import pytest
import torch

from obert_kernels import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
B, K, M = 50, 32, 1024  # block size, gradients per call, num_grads (the 1/m scale)
# the naive update costs the same per gradient at any k: 4 gradients a call keep d = 10^6 at ~2 s
K_NAIVE = 4
SIZES = {"cpu": [100_000, 1_000_000], "cuda": [1_000_000, 10_000_000]}
CASES = [(dev, d, be) for dev in DEVICES for d in SIZES[dev] for be in ops.BACKENDS
         if not (be == "triton" and dev == "cpu")]
UNSTRUCTURED = ops.parse_pattern("unstructured")
IDS = [f"{dev}-d{d:.0e}-{be}".replace("+0", "") for dev, d, be in CASES]


@functools.lru_cache(maxsize=1)
def make_finv(d: int, device: str) -> torch.Tensor:
    """A realistic F⁻¹ (ceil(d/B), B, B) float32: λI + G Gᵀ/m blocks inverted (the op under test excluded)."""
    nb = -(-d // B)
    g = torch.randn(nb, 2 * B, B, device=device)
    fisher = torch.baddbmm(torch.eye(B, device=device).expand(nb, B, B) * 1e-2, g.transpose(1, 2), g, alpha=1 / (2 * B))
    # contiguous: cholesky_inverse on CUDA may return transposed strides, which the CUDA kernels refuse
    # (the first GPU run skipped every CUDA case for it)
    return torch.cholesky_inverse(torch.linalg.cholesky(fisher)).contiguous()


def block_major(d: int, device: str, k: int = K) -> torch.Tensor:
    """A gradient chunk (ceil(d/B), k, B) float32, as FisherPruner buffers it."""
    return torch.randn(-(-d // B), k, B, device=device) * 1e-3


def run(benchmark, fn, setup, rounds: int, device: str, gflop: float | None, gbyte: float):
    """Time fn(*setup()) with fresh inputs per round; record GFLOP/s (None: not counted) and GB/s of the mean."""
    def call(*args):
        fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(call, setup=lambda: (setup(), {}), rounds=rounds, warmup_rounds=1)
    benchmark.extra_info["gbyte"] = gbyte
    if gflop is not None:
        benchmark.extra_info["gflop"] = gflop
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None and stats.stats.mean > 0:
        benchmark.extra_info["gbps"] = gbyte / stats.stats.mean
        if gflop is not None:
            benchmark.extra_info["gflops"] = gflop / stats.stats.mean


def skip_unless_served(op: str, backend: str, **call) -> None:
    reasons = ops.not_supported_reasons(op, backend, **call)
    if reasons:
        pytest.skip(f"{backend}: " + "; ".join(reasons))


@pytest.mark.parametrize("device,d,backend", CASES, ids=IDS)
def test_woodbury_update(benchmark, bench_rounds, device, d, backend):
    finv, grads = make_finv(d, device), block_major(d, device)
    skip_unless_served("woodbury_update", backend, finv=finv, grads=grads)
    work = finv.numel() * 4 / 1e9
    run(benchmark, lambda f, g: ops.woodbury_update(f, g, M, backend=backend),
        lambda: (finv.clone(), grads), bench_rounds, device, 4e-9 * finv.shape[0] * B * B * K, 2 * work)


NAIVE_CASES = [(dev, d) for dev in DEVICES for d in SIZES[dev]]


@pytest.mark.parametrize("device,d", NAIVE_CASES, ids=[f"{dev}-d{d:.0e}".replace("+0", "") for dev, d in NAIVE_CASES])
def test_naive_woodbury_update(benchmark, bench_rounds, device, d):
    """The baseline: the reference implementation's per-gradient update (SPEC §5: 3·4·d·B bytes a gradient)."""
    finv, grads = make_finv(d, device), block_major(d, device, K_NAIVE)
    work = finv.numel() * 4 / 1e9
    run(benchmark, lambda f, g: ops.naive_woodbury_update(f, g, M), lambda: (finv.clone(), grads),
        bench_rounds, device, 4e-9 * finv.shape[0] * B * B * K_NAIVE, 3 * work * K_NAIVE)


@pytest.mark.parametrize("device,d,backend", CASES, ids=IDS)
def test_fisher_accumulate(benchmark, bench_rounds, device, d, backend):
    grads = block_major(d, device)
    fisher = torch.zeros(grads.shape[0], B, B, device=device)
    skip_unless_served("fisher_accumulate", backend, finv=fisher, grads=grads)
    # Σ g gᵀ over the chunk as full B×B products: 2·B²·k flops a block; F read and written
    run(benchmark, lambda f, g: ops.fisher_accumulate(f, g, M, backend=backend), lambda: (fisher.clone(), grads),
        bench_rounds, device, 2e-9 * fisher.shape[0] * B * B * K, (2 * fisher.numel() + grads.numel()) * 4 / 1e9)


@pytest.mark.parametrize("upper_only", [True, False], ids=["upper-in-place", "full-tiles"])
@pytest.mark.parametrize("isa", ["auto", "avx2", "avx512"])
@pytest.mark.parametrize("d", SIZES["cpu"], ids=[f"d{d:.0e}".replace("+0", "") for d in SIZES["cpu"]])
def test_fisher_accumulate_cpp_tiles(benchmark, bench_rounds, d, isa, upper_only):
    """The cpp backend's accumulation with each instruction set here (``ops.backends.cpp.use_isa``;
    the same bits either way) and each of its kernels: the upper triangles added in place (as the
    pruner's flush calls it) and the padded tiles of full blocks (the op's default)."""
    from obert_kernels.ops.backends import cpp

    if isa != "auto" and isa not in cpp.isas():
        pytest.skip(f"cpp: this CPU runs the tiles with {cpp.isas()} ({cpp.status()})")
    grads = block_major(d, "cpu")
    fisher = torch.zeros(grads.shape[0], B, B)
    before = cpp.use_isa(isa)
    try:
        run(benchmark, lambda f, g: ops.fisher_accumulate(f, g, M, backend="cpp", upper_only=upper_only,
                                                          check_finite=False),
            lambda: (fisher.clone(), grads), bench_rounds, "cpu", 2e-9 * fisher.shape[0] * B * B * K,
            (2 * fisher.numel() + grads.numel()) * 4 / 1e9)
    finally:
        cpp.use_isa(before)


@pytest.mark.parametrize("device,d,backend", CASES, ids=IDS)
def test_fisher_invert(benchmark, bench_rounds, device, d, backend):
    fisher = make_finv(d, device)  # any SPD blocks: an F⁻¹ is one
    skip_unless_served("fisher_invert", backend, finv=fisher)
    # Cholesky (B³/3) and the inverse from it (2B³/3) per block
    run(benchmark, lambda f: ops.fisher_invert(f, 1e-6, backend=backend), lambda: (fisher.clone(),),
        bench_rounds, device, 1e-9 * fisher.shape[0] * B**3, 2 * fisher.numel() * 4 / 1e9)


def obs_inputs(d: int, device: str):
    """Weights (d,), F⁻¹, 30% already pruned, and 10% newly pruned among the rest."""
    weight = torch.randn(d, device=device)
    pruned = torch.rand(d, device=device) < 0.3
    new = (torch.rand(d, device=device) < 0.1) & ~pruned
    return weight, make_finv(d, device), pruned, new


@pytest.mark.parametrize("device,d,backend", CASES, ids=IDS)
def test_obs_scores(benchmark, bench_rounds, device, d, backend):
    weight, finv, pruned, _ = obs_inputs(d, device)
    skip_unless_served("obs_scores", backend, weight=weight, finv=finv, pattern=UNSTRUCTURED, return_factors=False)
    # unstructured: w²/(2[F⁻¹]_qq): weights, the F⁻¹ diagonal and the scores, 4 bytes each (no flops counted)
    run(benchmark, lambda w, f, p: ops.obs_scores(w, f, "unstructured", p, backend=backend),
        lambda: (weight, finv, pruned), bench_rounds, device, None, 3 * 4 * d / 1e9)


@pytest.mark.parametrize("device,d,backend", CASES, ids=IDS)
def test_obs_update(benchmark, bench_rounds, device, d, backend):
    weight, finv, pruned, new = obs_inputs(d, device)
    skip_unless_served("obs_update", backend, weight=weight, finv=finv, pattern=UNSTRUCTURED, update="obs")
    # δw = −F⁻¹[:, P] ([F⁻¹]_PP)⁻¹ w_P per block: at least the newly pruned columns of F⁻¹ are
    # read (|P|·B floats a block) and the weights read and written; flops depend on |P|³, not counted
    cols = float(new.sum()) * B
    run(benchmark, lambda w, f, n: ops.obs_update(w, f, n, "unstructured", "obs", backend=backend),
        lambda: (weight.clone(), finv, new), bench_rounds, device, None, 4 * (cols + 2 * d) / 1e9)

