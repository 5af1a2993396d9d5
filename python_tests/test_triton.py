"""The Triton backend against the float64 oracles (SPEC §4), its dispatch rules, and FisherPruner on it.

On a machine without CUDA, conftest sets TRITON_INTERPRET=1 before obert_kernels is
imported, so these tests run the kernels through the Triton interpreter on the CPU; with
a GPU they run natively on "cuda" (and on "cpu" only if the interpreter is on).
Select them with ``-m triton``.
"""
import copy
import warnings

import pytest
import torch
from conftest import RTOL, naive_fp32_error, random_finv, random_grads, random_pruned, rel_err, shape_for, spec_tolerance
from test_woodbury import build

pytest.importorskip("triton", reason="triton is not installed: pip install 'obert_kernels[triton]'")

from obert_kernels import FisherPruner, ops, parse_pattern  # noqa: E402
from obert_kernels.ops import dispatch  # noqa: E402

_triton = pytest.importorskip("obert_kernels.ops.backends.triton", reason="the Triton backend did not load")

pytestmark = pytest.mark.triton

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "3:8"]
UPDATES = ["obs", "joint", "none"]


@pytest.fixture
def tdevice(device) -> str:
    """The devices the Triton kernels can run on here: cuda natively, cpu under the interpreter."""
    if device == "cpu" and not _triton.INTERPRETED:
        pytest.skip("Triton kernels are compiled (TRITON_INTERPRET is not 1): they do not run on CPU tensors")
    return device


def test_cpu_runs_are_interpreted_when_no_gpu():
    """conftest's TRITON_INTERPRET=1 really reaches the kernels (they are InterpretedFunctions)."""
    from triton.runtime.interpreter import InterpretedFunction

    from obert_kernels.ops.backends.triton import KERNELS

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: kernels are compiled")
    assert len(KERNELS) == 9
    assert _triton.INTERPRETED == all(isinstance(k, InterpretedFunction) for k in KERNELS)
    import os

    assert _triton.INTERPRETED == (os.environ.get("TRITON_INTERPRET") == "1")


# ---- Fisher build -------------------------------------------------------------------------
# (d, B, m, k): d not a multiple of B, B not a power of two, k not dividing m, B > m,
# P = 64 with one block per program, P = 16 with several.
SHAPES = [(233, 10, 37, 7), (97, 13, 29, 29), (130, 40, 20, 3), (150, 64, 9, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("layout", ["rows", "block-major"])
def test_woodbury_within_spec_tolerance(seed, tdevice, shape, layout):
    d, B, m, k = shape
    damp = 1e-2
    grads = random_grads(m, d, device=tdevice)
    ref = ops.fisher_inverse_ref(grads, B, damp)
    finv = build("woodbury", grads, B, damp, k, layout, backend="triton")
    tol = spec_tolerance(naive_fp32_error(grads, B, damp, ref))
    assert finv.dtype == torch.float32 and finv.shape == ref.shape
    assert rel_err(finv, ref) <= tol
    assert rel_err(ops.init_finv(*ref.shape[:2], damp), ref) > 100 * tol  # a wrong F⁻¹ fails


def test_woodbury_small_damp_realistic_scale(seed, tdevice):
    """oBERT's damp 1e-7 with gradients ~1e-3 (‖g‖²/λ ≫ m): still within the rule."""
    B, m, d = 20, 48, 130
    grads = random_grads(m, d, scale=1e-3, device=tdevice)
    ref = ops.fisher_inverse_ref(grads, B, 1e-7)
    tol = spec_tolerance(naive_fp32_error(grads, B, 1e-7, ref))
    assert rel_err(build("woodbury", grads, B, 1e-7, 16, backend="triton"), ref) <= tol


def test_woodbury_strided_and_low_precision_grads(seed, tdevice):
    """Any strides (a transposed view) and fp16 gradients are read in place, as torch reads them."""
    B, m, d = 12, 9, 70
    grads = random_grads(m, d, device=tdevice)
    strided = grads.t().contiguous().t()  # (m, d) with strides (1, m)
    out = ops.init_finv(6, B, 1e-2, device=tdevice)
    ops.woodbury_update(out, strided, m, backend="triton")
    expect = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=tdevice), grads, m, backend="torch")
    assert rel_err(out, expect) < 1e-5
    half = grads.half()
    out16 = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=tdevice), half, m, backend="triton")
    expect16 = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=tdevice), half.float(), m, backend="torch")
    assert rel_err(out16, expect16) < 1e-5


@pytest.mark.parametrize("shape", [(233, 10, 37, 7), (97, 13, 29, 29), (130, 40, 45, 16)])
def test_direct_path_within_spec_tolerance(seed, tdevice, shape):
    """fisher_accumulate (tl.dot, fp32) + fisher_invert (Gauss–Jordan in registers); m ≥ B as in test_woodbury."""
    d, B, m, k = shape
    damp = 1e-2
    grads = random_grads(m, d, device=tdevice)
    ref = ops.fisher_inverse_ref(grads, B, damp)
    tol = spec_tolerance(naive_fp32_error(grads, B, damp, ref))
    for layout in ("rows", "block-major"):
        finv = build("direct", grads, B, damp, k, layout, backend="triton")
        assert rel_err(finv, ref) <= tol
        assert torch.equal(finv, finv.transpose(1, 2))  # symmetrised in the kernel


def test_fisher_accumulate_matches_torch(seed, tdevice):
    fisher_t = torch.rand(5, 11, 11, device=tdevice)
    fisher_r = fisher_t.clone()
    grads = random_grads(19, 53, device=tdevice)
    ops.fisher_accumulate(fisher_t, grads, 40, backend="triton")
    ops.fisher_accumulate(fisher_r, grads, 40, backend="torch")
    assert rel_err(fisher_t, fisher_r) < 1e-6


def test_fisher_invert_falls_back_on_indefinite_block(tdevice):
    fisher = torch.zeros(3, 5, 5, device=tdevice)
    fisher[1] = -torch.eye(5) * 1e-3  # not positive definite at damp 1e-4
    with pytest.warns(RuntimeWarning, match="retried"):
        ops.fisher_invert(fisher, 1e-4, backend="triton")
    assert torch.isfinite(fisher).all()
    assert torch.allclose(fisher[0], torch.eye(5, device=tdevice) * 1e4)
    assert torch.allclose(fisher[2], torch.eye(5, device=tdevice) * 1e4)
    with pytest.raises(FloatingPointError, match="non-finite"):
        ops.fisher_invert(torch.full((1, 3, 3), float("nan"), device=tdevice), 1e-3, backend="triton")


# ---- scores and update ---------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("with_pruned", [False, True])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.float16])
def test_scores_match_oracle(seed, tdevice, pattern, with_pruned, wdtype):
    d, B = shape_for(pattern)
    finv = random_finv(d, B)
    w = torch.randn(d).to(wdtype)  # fp16 weights are read as they are, scored in fp32
    pruned = random_pruned(d, pattern) if with_pruned else None
    ref = ops.obs_scores_ref(w, finv, parse_pattern(pattern), pruned)
    out = ops.obs_scores(w.to(tdevice), finv.to(tdevice, torch.float32), pattern,
                         None if pruned is None else pruned.to(tdevice), backend="triton")
    assert out.shape == ref.shape and out.dtype == torch.float32
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out).cpu(), finite)
    assert torch.equal(out.cpu()[~finite], ref[~finite].float())  # ±∞ exactly where the oracle has them
    assert rel_err(out.cpu()[finite], ref[finite]) < RTOL[torch.float32]
    # a score off by one entry of F⁻¹ (the plain diagonal for a group) would fail the bound
    if pattern != "unstructured":
        wrong = ops.obs_scores_ref(w, finv, parse_pattern("unstructured"))
        wrong = wrong.reshape(-1, parse_pattern(pattern).group_size).sum(-1)
        if not parse_pattern(pattern).is_nm:
            assert rel_err(wrong[finite], ref[finite]) > 100 * RTOL[torch.float32]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("update", UPDATES)
def test_update_matches_oracle(seed, tdevice, pattern, update):
    d, B = shape_for(pattern)
    finv = random_finv(d, B)
    w = torch.randn(d)
    new = random_pruned(d, pattern, 0.3)
    ref = ops.obs_update_ref(w, finv, new, parse_pattern(pattern), update)
    out = w.to(tdevice).clone()
    ops.obs_update(out, finv.to(tdevice, torch.float32), new.to(tdevice), pattern, update, backend="triton")
    out = out.cpu()
    assert torch.all(out[new] == 0)  # exactly zero
    assert rel_err(out, ref) < 10 * RTOL[torch.float32]
    if update != "none":
        assert rel_err(w, ref) > 1e-2  # the update moved the kept weights: a missing update fails


@pytest.mark.parametrize("update", ["obs", "joint"])
def test_update_on_strided_half_weight(seed, tdevice, update):
    """A non-contiguous fp16 weight (a transposed Linear weight) is updated in place, in its dtype."""
    finv = random_finv(60, 12).to(tdevice, torch.float32)
    base = torch.randn(5, 12, device=tdevice).half()
    weight = base.t()  # (12, 5), not contiguous
    new = torch.rand(12, 5, device=tdevice) < 0.3
    expect = weight.clone()
    ops.obs_update(expect, finv, new, "unstructured", update, backend="torch")
    ops.obs_update(weight, finv, new, "unstructured", update, backend="triton")
    assert weight.dtype == torch.float16 and torch.all(weight[new] == 0)
    assert rel_err(weight, expect) < 2e-3 and torch.equal(base.t(), weight)  # written through the view


def test_update_on_a_parameter_bumps_its_version(seed, tdevice):
    """A tensor autograd tracks is updated through copy_ (as torch does), so autograd sees the change."""
    finv = random_finv(40, 10).to(tdevice, torch.float32)
    weight = torch.nn.Parameter(torch.randn(4, 10, device=tdevice))
    expect = weight.detach().clone()
    new = torch.rand(4, 10, device=tdevice) < 0.3
    ops.obs_update(expect, finv, new, "unstructured", "obs", backend="torch")
    version = weight._version
    ops.obs_update(weight, finv, new, "unstructured", "obs", backend="triton")
    assert weight._version > version and rel_err(weight, expect) < 1e-5


def test_blocks_without_pruning_are_untouched(seed, tdevice):
    finv = random_finv(40, 10).to(tdevice, torch.float32)
    w = torch.randn(40, device=tdevice)
    new = torch.zeros(40, dtype=torch.bool, device=tdevice)
    new[12] = True
    for update in ("obs", "joint"):
        out = w.clone()
        ops.obs_update(out, finv, new, "unstructured", update, backend="triton")
        assert torch.equal(out[:10], w[:10]) and torch.equal(out[20:], w[20:])
        assert not torch.equal(out[10:20], w[10:20])


def test_joint_update_redoes_non_positive_definite_blocks_with_torch(seed, tdevice):
    """A block whose Gauss–Jordan meets a pivot ≤ 0 is not written by the kernel but by torch."""
    finv = random_finv(36, 12).float()
    finv[1] = -finv[1]  # negative definite: the first pivot is < 0
    finv = finv.to(tdevice)
    w = torch.randn(36, device=tdevice)
    new = torch.rand(36, device=tdevice) < 0.4
    new[12] = True
    expect = w.clone()
    ops.obs_update(expect, finv, new, "unstructured", "joint", backend="torch")
    out = w.clone()
    ops.obs_update(out, finv, new, "unstructured", "joint", backend="triton")
    assert rel_err(out, expect) < 1e-5


# ---- dispatch ------------------------------------------------------------------------------
def test_auto_stays_on_torch_for_cpu_tensors():
    finv = ops.init_finv(2, 4, 1.0)
    call = dict(finv=finv, grads=torch.randn(1, 8))
    assert dispatch.resolve("woodbury_update", "auto", **call)[0] == "torch"
    assert "only on CUDA" in _triton._auto_reasons(**call)[0]


def test_explicit_triton_on_cpu_runs_under_interpreter_or_says_how(monkeypatch):
    finv = ops.init_finv(2, 4, 1.0)
    grads = torch.randn(3, 8)
    if _triton.INTERPRETED:
        out = ops.woodbury_update(finv.clone(), grads, 3, backend="triton")
        assert rel_err(out, ops.woodbury_update(finv.clone(), grads, 3, backend="torch")) < 1e-6
    monkeypatch.setattr(_triton, "INTERPRETED", False)
    with pytest.raises(ops.BackendNotSupported, match="TRITON_INTERPRET=1") as info:
        ops.woodbury_update(finv, grads, 3, backend="triton")
    assert "CPU" in info.value.reasons[0]
    assert torch.equal(finv, ops.init_finv(2, 4, 1.0))  # nothing ran
    ops.woodbury_update(finv, grads, 3)  # auto: torch


def test_reasons_name_what_the_kernels_cannot_serve():
    f64 = ops.init_finv(2, 4, 1.0, dtype=torch.float64)
    reasons = ops.not_supported_reasons("obs_scores", "triton", weight=torch.randn(8), finv=f64,
                                        pattern=parse_pattern("unstructured"))
    assert any("float64" in r and "backend='torch'" in r for r in reasons)
    big = torch.zeros(1, 130, 130)
    reasons = ops.not_supported_reasons("woodbury_update", "triton", finv=big, grads=torch.randn(1, 130))
    assert any("B=130 > 128" in r for r in reasons)
    assert not [r for r in ops.not_supported_reasons("obs_update", "triton", weight=torch.randn(130), finv=big,
                                                       pattern=parse_pattern("unstructured"), update="none")
                if "B=130" in r]  # zeroing alone holds no block
    wide = parse_pattern("2:32")
    reasons = ops.not_supported_reasons("obs_scores", "triton", weight=torch.randn(64), finv=torch.zeros(1, 64, 64),
                                        pattern=wide)
    assert any("more than 16" in r for r in reasons)
    # auto falls back to torch for what Triton cannot serve, explicit raises with the reasons
    assert ops.obs_scores(torch.randn(8), f64).dtype == torch.float64
    with pytest.raises(ops.BackendNotSupported, match="float64"):
        ops.obs_scores(torch.randn(8), f64, backend="triton")


# ---- FisherPruner end to end ---------------------------------------------------------------
def tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8))


@pytest.mark.parametrize("pattern,update,method", [
    ("unstructured", "obs", "woodbury"), ("block4", "joint", "direct"), ("2:4", "obs", "woodbury"),
])
def test_pruner_on_triton_matches_torch(seed, tdevice, pattern, update, method):
    model = tiny_model().to(tdevice)
    twin = copy.deepcopy(model)
    kw = dict(block_size=12, num_grads=10, damp=1e-3, pattern=pattern, update=update, chunk_size=4,
              fisher_method=method, verbose=False)
    pruners = [FisherPruner(model, backend="triton", **kw), FisherPruner(twin, backend="torch", **kw)]
    for step in (0.3, 0.6):
        for _ in range(10):
            grads = [torch.randn(p.shape, device=tdevice) for p in (model[0].weight, model[2].weight)]
            for pruner in pruners:
                pruner.add_grads(grads)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warnings expected on these well-posed inputs
            reports = [pruner.prune(step) for pruner in pruners]
    assert reports[0].backend == "triton"
    for name in pruners[0].names:
        assert torch.equal(pruners[0].masks[name], pruners[1].masks[name])
    for mine, theirs in zip(model.parameters(), twin.parameters()):
        assert rel_err(mine, theirs) < 1e-4
    assert abs(pruners[0].sparsity - (0.5 if pattern == "2:4" else 0.6)) < 0.05


# ---- the GPU benchmark's CPU-side pieces ---------------------------------------------------
def _bench_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_triton_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_triton_gpu", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_counts_configs_and_memory():
    bench = _bench_module()
    args = bench.parse_args([])
    configs = bench.enumerate_configs(bench.parse_list(args.d), bench.parse_list(args.block_sizes),
                                      bench.parse_list(args.chunks))
    assert len(configs) == 3 * 4 * 3 and configs[-1].d == 85_000_000
    assert {c.B for c in configs} == {32, 50, 64, 128} and {c.k for c in configs} == {8, 32, 128}
    big = bench.Config(85_000_000, 128, 128)
    assert bench.finv_bytes(big) == 4 * 664_063 * 128 * 128  # ceil(d/B) blocks: 43.5 GB
    assert bench.memory_needed(big, 1) > 80e9  # does not fit an 80 GB H100: skipped with a reason
    bert = bench.Config(85_000_000, 50, 32)
    assert bench.woodbury_flops_per_grad(bert) == 4.0 * 85_000_000 * 50  # SPEC §5
    assert bench.naive_bytes_per_grad(bert) == 3 * bench.finv_bytes(bert)
    assert bench.fused_bytes_per_chunk(bert) == 2 * bench.finv_bytes(bert) + 4 * 1_700_000 * 32 * 50
    assert bench.rotation_count(bench.Config(1_000_000, 32, 8), 50 * 2**20) >= 2  # small chunks rotate
    quick = bench.parse_args(["--quick"])
    assert (quick.d, quick.block_sizes, quick.chunks) == ("1e6,8.5e7", "50", "32")


def test_gpu_bench_markdown_renders():
    bench = _bench_module()
    record = {"environment": {"device": "X", "date": "2026-01-01", "torch": "t", "triton": "3", "python": "3",
                              "cuda": "13", "command": "c"},
              "ceilings": {"bandwidth_gbps": 3000.0, "fma_tflops": 50.0},
              "checks": [{"d": 85_000_000, "B": 50, "k": 32, "rel_err": 1e-7, "err_vs_naive": 1.0}],
              "fisher": [{"d": 85_000_000, "B": 50, "k": 32, "method": "triton", "ms_per_grad": 1.0, "tflops": 17.0,
                          "fma_fraction": 0.34, "gbps": 100.0, "bw_fraction": 0.03, "vs_naive": 21.0, "G": 1,
                          "num_warps": 2}],
              "scores_update": [{"d": 85_000_000, "B": 50, "op": "obs_scores", "pattern": "unstructured", "ms": 1.0,
                                 "vs_read_finv": 0.1, "rel_err": 1e-8, "passed": True}],
              "skipped": [{"d": 85_000_000, "B": 128, "k": 128, "why": "needs 88 GB"}]}
    record["targets"] = bench.target_lines(record)
    text = bench.markdown(record)
    assert "21.0× naive" in record["targets"][0] and "34% of the FMA ceiling" in record["targets"][0]
    assert "| 8.5e+07 | 50 | 32 | triton (G=1, 2w) |" in text and "needs 88 GB" in text
