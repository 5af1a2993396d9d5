"""Sequential OBS (SPEC §2d): every backend against the float64 oracle, selection, the pruner.

Float32 backends may meet near-ties the oracle breaks the other way; ``assert_orders_match``
accepts a block whose order diverges only where the two steps' losses agree within the
tolerance (a real tie), and only for a few blocks, so a wrong order still fails.
"""
from __future__ import annotations

import pytest
import torch
from conftest import random_finv, random_pruned, rel_err, shape_for

from obert_kernels import FisherPruner, ops, parse_pattern
from obert_kernels.core import sequential_select
from obert_kernels.ops import blocks
from obert_kernels.ops.backends.torch import sequential as seq

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "4:8"]


def assert_orders_match(order, cum, ref_order, ref_cum, rtol):
    """Same orders and cumulative losses, up to float near-ties (module docstring)."""
    order, cum, ref_cum = order.cpu(), cum.double().cpu(), ref_cum.double()
    assert order.shape == ref_order.shape and torch.equal(torch.isfinite(cum), torch.isfinite(ref_cum))
    diverged = 0
    for b in range(order.shape[0]):
        differ = torch.nonzero(order[b] != ref_order[b]).flatten()
        stop = int(differ[0]) if differ.numel() else order.shape[1]
        if differ.numel():
            diverged += 1
            k = stop
            assert abs(cum[b, k] - ref_cum[b, k]) <= rtol * abs(ref_cum[b, k]) + 1e-12, (b, k)
        fin = torch.isfinite(ref_cum[b, :stop])
        assert torch.allclose(cum[b, :stop][fin], ref_cum[b, :stop][fin], rtol=rtol, atol=1e-12)
    assert diverged <= max(1, order.shape[0] // 5)


def case(pattern, with_pruned, dtype=torch.float64, block8=24):
    """Random SPD F⁻¹ (awkward sizes from conftest.shape_for), weights and an already-pruned mask."""
    d, B = shape_for(pattern, block8)
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=torch.float64)
    pruned = random_pruned(d, pattern, 0.25) if with_pruned else None
    return w, finv, pruned


# ---- the torch backend and the oracle ---------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("with_pruned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_matches_reference(seed, pattern, with_pruned, dtype):
    pat = parse_pattern(pattern)
    w, finv, pruned = case(pattern, with_pruned)
    ref_order, ref_cum = ops.sequential_order_ref(w, finv, pat, pruned)
    order, cum = ops.sequential_order(w.to(dtype), finv.to(dtype), pattern, pruned, backend="torch")
    assert order.dtype == torch.int64 and cum.dtype == dtype
    if dtype == torch.float64:
        assert torch.equal(order, ref_order)
        fin = torch.isfinite(ref_cum)
        assert torch.equal(torch.isfinite(cum), fin) and rel_err(cum[fin], ref_cum[fin]) < 1e-10
    else:
        assert_orders_match(order, cum, ref_order, ref_cum, 1e-4)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_reference_properties(seed, pattern):
    """What the oracle promises: no pruned or padding unit is ever taken, every live unit is
    (N:M: exactly enough for N per group), losses never decrease."""
    pat = parse_pattern(pattern)
    w, finv, pruned = case(pattern, True)
    order, cum = ops.sequential_order_ref(w, finv, pat, pruned)
    g, d = blocks.unit_size(pat), w.numel()
    B, U = finv.shape[1], order.shape[1]
    units = (order + (torch.arange(order.shape[0]) * U).unsqueeze(1))[order >= 0]  # global unit ids
    assert units.unique().numel() == units.numel() and bool((units * g < d).all())
    gone = pruned.reshape(-1, g).all(-1)
    assert not bool(gone[units].any())
    fin = torch.isfinite(cum)
    assert bool((cum[:, 1:][fin[:, 1:]] >= cum[:, :-1][fin[:, 1:]]).all())
    if pat.is_nm:
        lost = pruned.clone()
        lost[units] = True  # units are weights here
        before = pruned.reshape(-1, pat.group_size).sum(-1)  # random masks may exceed N already
        assert torch.equal(lost.reshape(-1, pat.group_size).sum(-1), before.clamp_min(pat.n_prune))
    else:
        assert units.numel() == int((~gone).sum())
    assert B % g == 0


def test_packed_matches_dense(seed):
    w, finv, pruned = case("unstructured", True)
    dense = ops.sequential_order(w.float(), finv.float(), "unstructured", pruned, backend="torch")
    packed = ops.sequential_order(w.float(), ops.pack_upper(finv.float()), "unstructured", pruned, backend="torch")
    assert torch.equal(dense[0], packed[0]) and torch.equal(dense[1], packed[1])


def test_slices_do_not_change_the_result(seed, monkeypatch):
    """Working on slices of blocks (bounded memory) gives what one slice of everything gives."""
    w, finv, pruned = case("block4", True)
    whole = ops.sequential_order(w, finv, "block4", pruned, backend="torch")
    monkeypatch.setattr(seq, "SLICE_BYTES", 1)  # one block per slice
    sliced = ops.sequential_order(w, finv, "block4", pruned, backend="torch")
    fin = torch.isfinite(whole[1])  # batched LAPACK may round the last bits differently per batch size
    assert torch.equal(whole[0], sliced[0]) and torch.allclose(whole[1][fin], sliced[1][fin], rtol=1e-12)


def test_finv_left_intact(seed):
    w, finv, pruned = case("2:4", True, torch.float32)
    finv = finv.float()
    before = finv.clone()
    ops.sequential_order(w.float(), finv, "2:4", pruned, backend="torch")
    assert torch.equal(finv, before)


def test_decoupled_pruned_equal_conditioned(seed):
    """Already-pruned weights: conditioning H on them equals dropping their rows when F⁻¹ already
    decouples them (the pruner's case: their gradients are zeroed), and differs when it does not."""
    d, B = 96, 12
    pruned = torch.rand(d) < 0.3
    grads = torch.randn(40, d).masked_fill(pruned, 0.0)
    finv = ops.fisher_inverse_ref(grads, B, 1e-2)
    w = torch.randn(d, dtype=torch.float64).masked_fill(pruned, 0.0)
    ref = ops.sequential_order_ref(w, finv, parse_pattern("unstructured"), pruned)
    out = ops.sequential_order(w, finv, "unstructured", pruned, backend="torch")
    assert torch.equal(out[0], ref[0]) and torch.allclose(out[1], ref[1], rtol=1e-10)
    coupled = ops.fisher_inverse_ref(torch.randn(40, d), B, 1e-2)
    cond = ops.sequential_order(w, coupled, "unstructured", pruned, backend="torch")
    assert torch.equal(cond[0], ops.sequential_order_ref(w, coupled, parse_pattern("unstructured"), pruned)[0])


# ---- properties -----------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["unstructured", "block4", "2:4"])
def test_diagonal_finv_picks_what_obs_picks(seed, pattern):
    """A diagonal F⁻¹ couples nothing: each block's greedy order sorts its obs scores (the
    cumulative losses are their running sums), and selection ranked by the step increments takes
    exactly obs's set (global threshold; N:M, under either ranking: each group's best subset)."""
    pat = parse_pattern(pattern)
    d, B = shape_for(pattern)
    finv = torch.diag_embed(torch.rand(-(-d // B), B, dtype=torch.float64) + 0.1)
    w = torch.randn(d, dtype=torch.float64)
    scores = ops.obs_scores(w, finv, pat)
    order, cum = ops.sequential_order(w, finv, pat, backend="torch")
    if pat.is_nm:
        from obert_kernels.core import selection

        counts = torch.isfinite(cum).sum(1)
        expected = selection.select_nm(scores, pat)
    else:
        g = pat.group_size
        count = int(0.6 * (d // g) + 0.5)
        counts = sequential_select.prefix_counts(cum, count, criterion="increment")
        from obert_kernels.core import selection

        U = order.shape[1]
        per_block = torch.nn.functional.pad(scores, (0, order.numel() - scores.numel()), value=float("inf")).reshape(-1, U)
        taken = per_block.gather(1, order.clamp_min(0)).masked_fill(order < 0, float("inf"))
        assert torch.equal(taken, per_block.sort(1).values)  # ascending obs scores (ties by position)
        fin = torch.isfinite(cum)
        assert torch.allclose(cum[fin], taken.masked_fill(~fin, 0).cumsum(1)[fin], rtol=1e-12)

        expected = selection.expand_groups(selection.select_lowest(scores, count), g)
    assert torch.equal(sequential_select.prefix_mask(order, counts, pat, d), expected)


@pytest.mark.parametrize("pattern", ["unstructured", "block4", "2:4"])
@pytest.mark.parametrize("with_pruned", [False, True])
def test_replay_equals_joint_update(seed, pattern, with_pruned):
    """Replaying each block's first c_b steps (the oracle's explicit w updates) gives the weights
    obs_update(update="joint") gives for the removed set plus the already-pruned weights."""
    pat = parse_pattern(pattern)
    w, finv, pruned = case(pattern, with_pruned)
    w = w if pruned is None else w.masked_fill(pruned, 0.0)
    order, cum = ops.sequential_order(w, finv, pat, pruned, backend="torch")
    counts = torch.randint(0, order.shape[1] + 1, (order.shape[0],)).minimum(torch.isfinite(cum).sum(1))
    mask = sequential_select.prefix_mask(order, counts, pat, w.numel())
    full = mask if pruned is None else mask | pruned
    joint = ops.obs_update(w.clone(), finv, full, pat, "joint", backend="torch")
    replay = replay_weights(w, finv, order, counts, pat, pruned)
    assert rel_err(joint, replay) < 1e-9
    assert rel_err(w.masked_fill(full, 0.0), replay) > 1e-3  # the compensation is there


def replay_weights(w, finv, order, counts, pattern, pruned):
    """The greedy's own weight updates, one block and one removal at a time (float64)."""
    B, g, d = finv.shape[1], blocks.unit_size(pattern), w.numel()
    out = w.clone()
    for b in range(finv.shape[0]):
        lo, hi = b * B, min(b * B + B, d)
        H, wb = finv[b, : hi - lo, : hi - lo].clone(), w[lo:hi].clone()
        dead = [] if pruned is None else torch.nonzero(pruned[lo:hi]).flatten().tolist()
        steps = [dead] if dead else []
        for u in order[b, : int(counts[b])].tolist():
            steps.append([i for i in range(u * g, u * g + g) if i < hi - lo and i not in dead])
        for Q in steps:
            solve = torch.linalg.inv(H[Q][:, Q])
            wb = wb - H[:, Q] @ solve @ wb[Q]
            wb[Q] = 0.0
            H = H - H[:, Q] @ solve @ H[Q, :]
        out[lo:hi] = wb
    return out


def test_prefix_counts_exact_and_prefix(seed):
    """Σ c_b = count exactly, also with ties and blocks that ran out; −/+inf never taken."""
    cum = torch.rand(7, 9).cumsum(1)
    cum[2, 4:] = float("inf")
    cum[3] = cum[4]  # ties across blocks
    for criterion in sequential_select.CRITERIA:
        ranks = sequential_select.step_ranks(cum, criterion)
        assert bool((ranks[:, 1:] >= ranks[:, :-1]).all())
        for count in (0, 1, 17, 40, 58, 58 + 5):
            c = sequential_select.prefix_counts(cum, count, criterion)
            assert int(c.sum()) == min(count, 58) and int(c[2]) <= 4


# ---- the pruner ---------------------------------------------------------------------------
def _pruner(params, **kw):
    kw = {"block_size": 8, "num_grads": 24, "damp": 1e-2, "chunk_size": 5, "verbose": False, "update": "sequential", **kw}
    return FisherPruner(params, **kw)


def _feed(pruner, params):
    for _ in range(pruner.num_grads):
        pruner.add_grads({n: torch.randn_like(t) for n, t in params.items()})


@pytest.mark.parametrize("pattern,global_sparsity", [("unstructured", True), ("unstructured", False), ("block4", True),
                                                     ("2:4", True)])
def test_pruner_counts_and_two_steps(seed, pattern, global_sparsity):
    """Exact counts (global / per tensor), N:M exactly N per group, pruned weights stay pruned."""
    params = {"a": torch.randn(6, 16), "b": torch.randn(5, 12), "c": torch.randn(3, 20)}
    pat = parse_pattern(pattern)
    p = _pruner(params, pattern=pattern, global_sparsity=global_sparsity)
    masks = []
    for s in (0.3, 0.7):
        _feed(p, params)
        report = p.prune(s)
        masks.append({n: m.clone() for n, m in p.masks.items()})
        for n, t in params.items():
            assert bool((t[~p.masks[n]] == 0).all())
            if pat.is_nm:
                assert bool(((~p.masks[n]).reshape(-1, pat.group_size).sum(-1) == pat.n_prune).all())
            elif not global_sparsity:
                assert report.tensors[n].pruned == int(s * t.numel() + 0.5)
        if not pat.is_nm and global_sparsity:
            g = pat.group_size
            total = sum(t.numel() for t in params.values()) // g
            assert report.num_pruned == int(s * total + 0.5) * g
    for n in params:
        assert bool((~masks[1][n] | ~masks[0][n] == ~masks[1][n]).all())  # pruned stays pruned


def test_pruner_weights_are_joint_update_of_the_prefixes(seed):
    """One step: the pruner's weights equal the oracle's order, selection and joint update."""
    params = {"a": torch.randn(6, 16, dtype=torch.float64)}
    p = _pruner(params)
    _feed(p, params)
    w0 = params["a"].detach().reshape(-1).clone()
    finv = p.fisher_inverse("a").double()
    p.prune(0.5)
    order, cum = ops.sequential_order_ref(w0, finv, parse_pattern("unstructured"))
    counts = sequential_select.prefix_counts(cum, 48)
    mask = sequential_select.prefix_mask(order, counts, parse_pattern("unstructured"), w0.numel())
    assert torch.equal(~p.masks["a"].reshape(-1), mask)
    expected = ops.obs_update_ref(w0, finv, mask, parse_pattern("unstructured"), "joint")
    assert rel_err(params["a"].reshape(-1), expected) < 1e-4


# ---- Triton (interpreted on a CPU) and CUDA ---------------------------------------------------
# small awkward shapes: the interpreter runs every program's steps in Python
SMALL = {"unstructured": (50, 13), "block4": (44, 12), "2:4": (40, 12), "1:4": (40, 12), "4:8": (56, 24)}


def _triton_or_skip(device="cpu"):
    pytest.importorskip("triton", reason="triton is not installed")
    _triton = pytest.importorskip("obert_kernels.ops.backends.triton", reason="the Triton backend did not load")
    if device == "cpu" and not _triton.INTERPRETED:
        pytest.skip("Triton kernels are compiled (TRITON_INTERPRET is not 1): they do not run on CPU tensors")


@pytest.mark.triton
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("with_pruned", [False, True])
def test_triton_matches_reference(seed, device, pattern, with_pruned):
    _triton_or_skip(device)
    pat = parse_pattern(pattern)
    d, B = SMALL[pattern]
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=torch.float64)
    pruned = random_pruned(d, pattern, 0.25) if with_pruned else None
    ref_order, ref_cum = ops.sequential_order_ref(w, finv, pat, pruned)
    order, cum = ops.sequential_order(w.float().to(device), finv.float().to(device), pattern,
                                      None if pruned is None else pruned.to(device), backend="triton")
    assert cum.dtype == torch.float32
    assert_orders_match(order, cum, ref_order, ref_cum, 1e-4)


@pytest.mark.triton
def test_triton_packed_and_coupled_pruned(seed, device):
    """Packed F⁻¹ (dense tiles) and pruned weights that F⁻¹ still couples (the kernel's conditioning)."""
    _triton_or_skip(device)
    d, B = SMALL["unstructured"]
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=torch.float64)
    pruned = torch.rand(d) < 0.3
    ref = ops.sequential_order_ref(w, finv, parse_pattern("unstructured"), pruned)
    out = ops.sequential_order(w.float().to(device), ops.pack_upper(finv.float()).to(device), "unstructured",
                               pruned.to(device), backend="triton")
    assert_orders_match(*out, *ref, 1e-4)


def test_cuda_backend_reasons_or_match(seed):
    """Without a built extension and a GPU, the CUDA backend says why; with them, it matches the oracle."""
    reasons = ops.not_supported_reasons("sequential_order", "cuda", weight=torch.zeros(8), finv=torch.zeros(1, 8, 8),
                                        pattern=parse_pattern("unstructured"))
    if reasons:
        with pytest.raises(ops.BackendNotSupported):
            ops.sequential_order(torch.zeros(8), torch.eye(8).unsqueeze(0), backend="cuda")
        pytest.skip("; ".join(reasons))
    d, B = shape_for("unstructured")
    finv = random_finv(d, B)
    w = torch.randn(d, dtype=torch.float64)
    pruned = random_pruned(d, "unstructured", 0.25)
    ref = ops.sequential_order_ref(w, finv, parse_pattern("unstructured"), pruned)
    out = ops.sequential_order(w.float().cuda(), finv.float().cuda(), "unstructured", pruned.cuda(), backend="cuda")
    assert_orders_match(*out, *ref, 1e-4)


# ---- the CUDA kernel's per-block program, on the CPU (csrc/sequential_math.cuh) ----------------
from test_cuda_harness import harness  # noqa: E402,F401  (the compiled csrc/host_harness.cpp)


def host_sequential(lib, w, finv, pattern, pruned):
    """Run sequential_program on every block: (order, cumloss) as the CUDA launcher returns them."""
    import ctypes

    P, LL, I = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    lib.obk_host_sequential.argtypes = [P, P, P, LL, I, I, LL, I, I, I, P, P]
    lib.obk_host_sequential.restype = I
    nb, B = ops.checks.block_dims(finv)
    U, g = blocks.units_per_block(pattern, B), blocks.unit_size(pattern)
    m, n = (pattern.group_size, pattern.n_prune) if pattern.is_nm else (0, 0)
    order = torch.full((nb, U), -1, dtype=torch.int64)
    cum = torch.full((nb, U), float("inf"))
    wf, p8 = w.float().contiguous(), None if pruned is None else pruned.to(torch.uint8)
    rc = lib.obk_host_sequential(wf.data_ptr(), None if p8 is None else p8.data_ptr(), finv.data_ptr(), nb, B,
                                 int(ops.packed.is_packed(finv)), w.numel(), g, m, n, order.data_ptr(), cum.data_ptr())
    assert rc == 0  # no write past its shared memory
    return order, cum


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("with_pruned", [False, True])
@pytest.mark.parametrize("layout", ["dense", "packed"])
def test_cuda_program_matches_reference(harness, seed, pattern, with_pruned, layout):  # noqa: F811
    pat = parse_pattern(pattern)
    w, finv, pruned = case(pattern, with_pruned)
    ref = ops.sequential_order_ref(w, finv, pat, pruned)
    f = finv.float() if layout == "dense" else ops.pack_upper(finv.float())
    assert_orders_match(*host_sequential(harness, w, f.contiguous(), pat, pruned), *ref, 1e-4)


def test_cuda_program_conditions_on_coupled_pruned(harness, seed):  # noqa: F811
    d, B = 96, 12
    finv = ops.fisher_inverse_ref(torch.randn(40, d), B, 1e-2)  # couples every weight
    w, pruned = torch.randn(d, dtype=torch.float64), torch.rand(d) < 0.3
    ref = ops.sequential_order_ref(w, finv, parse_pattern("unstructured"), pruned)
    out = host_sequential(harness, w, finv.float().contiguous(), parse_pattern("unstructured"), pruned)
    assert_orders_match(*out, *ref, 1e-4)


# ---- public surface -------------------------------------------------------------------------
def test_one_shot_and_cli_reach_sequential(seed):
    """one_shot_prune passes update="sequential" through; the CLI and pipeline accept it."""
    from torch import nn

    from obert_kernels import one_shot_prune
    from obert_kernels.app.cli import build_parser
    from obert_kernels.recipes.prune_model import METHODS

    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = ((torch.randn(4, 12), torch.randint(0, 4, (4,))) for _ in iter(int, 1))
    pruner = one_shot_prune(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), batches, 0.6,
                            num_recomputations=2, block_size=8, num_grads=16, damp=1e-2, update="sequential",
                            progress=False, verbose=False)
    assert pruner.update == "sequential" and [r.update for r in pruner.history] == ["sequential"] * 2
    assert pruner.sparsity == int(0.6 * 256 + 0.5) / 256  # 12·16 + 16·4 weights, exact count
    args = build_parser().parse_args(["prune", "digits-mlp", "--out", "x", "--sparsity", "0.5", "--method", "sequential"])
    assert args.method == "sequential" and "sequential" in METHODS
    with pytest.raises(ValueError, match="update must be one of"):
        FisherPruner({"a": torch.randn(8, 8)}, update="greedy", verbose=False)
