"""FisherPruner: selection, masks, updates against the oracle, and bad input."""
import contextlib

import pytest
import torch
from conftest import random_grads, rel_err
from torch import nn

from obert_kernels import FisherMemoryError, FisherPruner, ops, parse_pattern


def make_params(dtype=torch.float32, shapes=((7, 12), (5, 20), (3, 4, 2, 2))):
    return {f"t{i}": torch.randn(*s, dtype=dtype) for i, s in enumerate(shapes)}


def feed(pruner, params, grads=None):
    """Fill the pruner with num_grads random gradients; returns them as (m, d_total) per name."""
    m = pruner.num_grads
    grads = grads or {n: random_grads(m, t.numel()).reshape(m, *t.shape).to(t.dtype) for n, t in params.items()}
    for i in range(m):
        assert pruner.add_grads({n: g[i] for n, g in grads.items()}) == i + 1
    return grads


def pruner_for(params, **kw):
    kw = {"block_size": 8, "num_grads": 24, "damp": 1e-2, "chunk_size": 5, "verbose": False, **kw}
    return FisherPruner(params, **kw)


@pytest.mark.parametrize("pattern", ["unstructured", "block4"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.93])
def test_global_selection_prunes_exact_count(seed, pattern, sparsity):
    params = make_params()
    p = pruner_for(params, pattern=pattern)
    feed(p, params)
    report = p.prune(sparsity)
    total = sum(t.numel() for t in params.values())
    g = parse_pattern(pattern).group_size
    expected = int(sparsity * (total // g) + 0.5) * g
    assert report.num_pruned == expected == sum(int((~m).sum()) for m in p.masks.values())
    for name, t in params.items():
        assert torch.all(t[~p.masks[name]] == 0)
        if g > 1:  # whole groups of 4 along the row
            assert torch.all(p.masks[name].reshape(-1, 4).sum(-1) % 4 == 0)


@pytest.mark.parametrize("sparsity", [0.25, 0.6])
def test_per_tensor_sparsity(seed, sparsity):
    params = make_params()
    p = pruner_for(params, global_sparsity=False)
    feed(p, params)
    report = p.prune(sparsity)
    for name, t in params.items():
        assert report.tensors[name].pruned == int(sparsity * t.numel() + 0.5)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_nm_prunes_exactly_n_per_group(seed, pattern):
    pat = parse_pattern(pattern)
    params = make_params(shapes=((6, 16), (4, 24)))
    p = pruner_for(params, pattern=pattern, block_size=8 if pat.group_size <= 8 else 16)
    feed(p, params)
    report = p.prune()
    assert report.target_sparsity == pytest.approx(pat.n_prune / pat.group_size)
    for name, t in params.items():
        per_group = (~p.masks[name]).reshape(-1, pat.group_size).sum(-1)
        assert torch.all(per_group == pat.n_prune)
        assert torch.all(t[~p.masks[name]] == 0)


def test_prune_matches_oracle(seed):
    """F⁻¹ against the float64 build; weights against the float64 update for the chosen mask."""
    params = make_params()
    originals = {n: t.clone() for n, t in params.items()}
    p = pruner_for(params, update="obs")
    grads = feed(p, params)
    for name, t in params.items():
        ref = ops.fisher_inverse_ref(grads[name].reshape(p.num_grads, -1), 8, 1e-2)
        assert rel_err(p.fisher_inverse(name), ref) < 1e-5
    finvs = {n: ops.fisher_inverse_ref(grads[n].reshape(p.num_grads, -1), 8, 1e-2) for n in params}
    p.prune(0.4)
    for name, t in params.items():
        new = ~p.masks[name].reshape(-1)
        expected = ops.obs_update_ref(originals[name], finvs[name], new, parse_pattern("unstructured"), "obs")
        assert rel_err(t.reshape(-1), expected) < 1e-4


@pytest.mark.parametrize("fisher_method", ["direct", "woodbury"])
def test_pruned_weights_stay_pruned_and_decoupled(seed, fisher_method):
    params = make_params()
    p = pruner_for(params, fisher_method=fisher_method)
    feed(p, params)
    p.prune(0.3)
    first = {n: m.clone() for n, m in p.masks.items()}
    feed(p, params)  # gradients of pruned weights are masked as they come in
    for name in params:
        diag = p.fisher_inverse(name).diagonal(dim1=1, dim2=2).reshape(-1)[: params[name].numel()]
        pruned = ~first[name].reshape(-1)
        assert torch.allclose(diag[pruned], torch.full_like(diag[pruned], 1 / 1e-2), rtol=1e-5)
    report = p.prune(0.6)
    for name, t in params.items():
        assert torch.all(first[name] | ~p.masks[name] == True)  # noqa: E712 - every old prune kept
        assert torch.all(t[~p.masks[name]] == 0)
    assert report.sparsity == pytest.approx(0.6, abs=1 / report.total)
    feed(p, params)
    assert p.prune(0.2).newly_pruned == 0  # below the current sparsity: nothing revived
    assert p.sparsity == pytest.approx(0.6, abs=1 / report.total)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model(seed, dtype):
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)
    p = FisherPruner(model, block_size=8, num_grads=16, damp=1e-2, verbose=False)
    x = torch.randn(16, 1, 12, dtype=dtype)
    for i in range(16):
        model.zero_grad()
        model(x[i]).float().pow(2).sum().backward()
        p.add_grads()
    p.prune(0.5)
    assert model[0].weight.dtype == dtype
    assert p.sparsity == pytest.approx(0.5, abs=0.01)
    assert all(torch.all(m.weight[~p.masks[f"{i}.weight"]] == 0) for i, m in ((0, model[0]), (2, model[2])))


def test_params_forms(seed):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Conv1d(2, 4, 3), nn.LayerNorm(4))
    assert FisherPruner(model, block_size=4, verbose=False).names == ["0.weight", "2.weight"]
    mapping = FisherPruner({"a": model[0].weight, "b": model[2].weight}, block_size=4, verbose=False)
    pairs = FisherPruner([("a", model[0].weight), ("b", model[2].weight)], block_size=4, verbose=False)
    assert mapping.names == pairs.names == ["a", "b"]
    assert mapping.num_blocks == pairs.num_blocks == 64 // 4 + -(-24 // 4)


def test_finite_gradient_whose_sum_overflows_is_accepted(seed):
    params = make_params()
    p = pruner_for(params)
    huge = {n: torch.full_like(t, 3e38) for n, t in params.items()}  # every sum is +inf in float32
    assert p.add_grads(huge) == 1


def test_bad_input_is_rejected_and_changes_nothing(seed):
    params = make_params()
    p = pruner_for(params)
    good = {n: torch.randn_like(t) for n, t in params.items()}
    p.add_grads(good)
    before = p._state.buffer.clone()
    bad_nan = dict(good, t1=torch.full_like(good["t1"], float("nan")))
    with pytest.raises(ValueError, match="gradient of 't1' has non-finite"):  # the bad tensor named
        p.add_grads(bad_nan)
    with pytest.raises(ValueError, match="shape"):
        p.add_grads(dict(good, t0=torch.randn(12, 7)))
    with pytest.raises(ValueError, match="exactly the tracked names"):
        p.add_grads({"t0": good["t0"]})
    with pytest.raises(ValueError, match="no .grad"):
        p.add_grads()
    with pytest.raises(RuntimeError, match="needs 24 gradients, 1 collected"):
        p.prune(0.5)
    # the filled row is untouched; the next row is scratch (a refused one-pass copy writes it
    # before it refuses), and the next accepted gradient overwrites all of it
    assert p.num_collected == 1 and torch.equal(p._state.buffer[:, :1], before[:, :1])
    assert torch.equal(p._state.buffer[:, 2:], before[:, 2:])
    p.add_grads(good)
    assert p.num_collected == 2 and torch.equal(p._state.buffer[:, 1], before[:, 0])
    for bad in (-0.1, 1.0, 1.5, float("nan"), None, "0.5"):
        with pytest.raises(ValueError, match="sparsity"):
            p.prune(bad)


def test_more_gradients_than_num_grads_is_an_error(seed):
    params = make_params(shapes=((4, 4),))
    p = pruner_for(params, num_grads=2)
    feed(p, params)
    with pytest.raises(RuntimeError, match="call prune"):
        p.add_grads({"t0": torch.randn(4, 4)})


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"damp": 0.0}, ValueError, "damp"),
        ({"damp": -1e-3}, ValueError, "damp"),
        ({"block_size": 50, "pattern": "block4"}, ValueError, "divisible by the group size"),
        ({"block_size": 30, "pattern": "2:4"}, ValueError, "divisible by the group size"),
        ({"update": "exact"}, ValueError, "update"),
        ({"backend": "numba"}, ValueError, "backend"),
        ({"num_grads": 0}, ValueError, "num_grads"),
        ({"fisher_method": "qr"}, ValueError, "fisher_method"),
    ],
)
def test_bad_config(kwargs, error, match):
    with pytest.raises(error, match=match):
        FisherPruner(make_params(), verbose=False, **kwargs)


def test_bad_params():
    with pytest.raises(TypeError, match="floating-point"):
        FisherPruner({"w": torch.ones(4, 4, dtype=torch.int64)}, verbose=False)
    with pytest.raises(ValueError, match="no tensors"):
        FisherPruner(nn.ReLU(), verbose=False)
    with pytest.raises(ValueError, match="rows of 6"):
        FisherPruner({"w": torch.randn(4, 6)}, pattern="2:4", block_size=8, verbose=False)
    w = torch.randn(4, 4)
    with pytest.raises(ValueError, match="listed twice"):
        FisherPruner([("a", w), ("b", w)], verbose=False)
    with pytest.raises(TypeError, match="not one tensor"):
        FisherPruner(w, verbose=False)


def test_memory_estimate_printed_and_refused(capsys):
    params = make_params()
    FisherPruner(params, block_size=8, chunk_size=4, verbose=True)
    err = capsys.readouterr().err
    total = sum(t.numel() for t in params.values())
    nb = sum(-(-t.numel() // 8) for t in params.values())
    assert f"{total:,} weights in {nb:,} blocks of 8" in err
    est = FisherPruner(params, block_size=8, chunk_size=4, fisher_storage="dense", verbose=False).memory_estimate()
    assert est.fisher_bytes == nb * 64 * 4 and est.buffer_bytes == 4 * nb * 8 * 4
    est = FisherPruner(params, block_size=8, chunk_size=4, fisher_storage="packed", verbose=False).memory_estimate()
    assert est.fisher_bytes == nb * 36 * 4 and est.packed
    with pytest.raises(FisherMemoryError, match="more than"):
        FisherPruner(params, block_size=8, verbose=False, max_memory_fraction=1e-15)


def test_state_dict_round_trip(seed):
    params = make_params()
    p = pruner_for(params)
    feed(p, params)
    p.prune(0.5)
    state = p.state_dict()
    fresh = make_params()
    q = pruner_for(fresh)
    q.load_state_dict(state)
    assert all(torch.equal(q.masks[n], p.masks[n]) for n in params)
    assert all(torch.all(fresh[n][~q.masks[n]] == 0) for n in params)
    with pytest.raises(ValueError, match="masks"):
        pruner_for(make_params(shapes=((3, 3),))).load_state_dict(state)


def test_report_table(seed):
    params = make_params()
    p = pruner_for(params)
    feed(p, params)
    report = p.prune(0.5)
    text = str(report)
    assert "total" in text and "t2" in text and f"{report.sparsity:.2%}" in text
    assert report.seconds > 0 and p.history == [report]
    assert p._state is None  # Fisher state freed


@pytest.mark.parametrize("path,backend,expect_sizes", [
    ("one write", "torch", [13]), ("one write", "auto", [13]), ("sliced", "torch", [3, 3, 3, 3, 1])])
def test_flush_applies_the_chunk_without_rechecking_it(seed, monkeypatch, request, path, backend, expect_sizes):
    """add_grads checks each gradient once; the flush then applies the chunk, in one write where
    the op's kernel is registered one_write (the dense direct build on torch, or cpp which auto
    takes on a CPU where it is built), else in slices of at most FLUSH_SLICE_BYTES of the
    Fisher state, and does not read the chunk again for finiteness (issue 15), with the same F
    as one unsliced accumulation."""
    from obert_kernels.core import fisher_state
    from obert_kernels.ops import checks, dispatch

    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)

    monkeypatch.setattr(fisher_state, "FLUSH_SLICE_BYTES", 3 * 8 * 8 * 4)  # 3 blocks of B = 8
    if path == "sliced":  # the same kernel, registered without the one_write capability
        stack.enter_context(dispatch.registered("fisher_accumulate", "torch", ops.fisher_accumulate_torch))
    params = {"w": torch.randn(100)}
    grads = random_grads(8, 100)
    p = FisherPruner(params, block_size=8, num_grads=8, chunk_size=4, damp=1e-2, backend=backend,
                     fisher_storage="dense", verbose=False)
    sizes, finite_checks = [], []
    real_apply, real_check = fisher_state.FisherState.apply_slice, checks.check_finite_input
    monkeypatch.setattr(fisher_state.FisherState, "apply_slice",
                        lambda self, blocks, *a: (sizes.append(blocks.stop - blocks.start), real_apply(self, blocks, *a))[1])
    monkeypatch.setattr(checks, "check_finite_input", lambda *a: (finite_checks.append(1), real_check(*a))[1])
    for g in grads[:5]:  # the 5th call flushes the first chunk of 4
        p.add_grads({"w": g})
    assert sizes == expect_sizes and finite_checks == []
    p._state.fisher.symmetrize()  # cpp adds to the upper triangles only (registered upper_only)
    fisher = p._state.fisher.blocks.clone()
    expected = torch.zeros(13, 8, 8, dtype=torch.float64)
    ops.fisher_accumulate(expected, grads[:4].double(), 8)
    assert rel_err(fisher.double(), expected) < 1e-6


def test_op_finiteness_check_can_be_skipped_by_a_caller_that_checked(seed):
    bad = random_grads(4, 64)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ops.fisher_accumulate(torch.zeros(8, 8, 8), bad, 4)
    with pytest.raises(ValueError, match="non-finite"):
        ops.woodbury_update(ops.init_finv(8, 8, 1.0), bad, 4)
    out = ops.fisher_accumulate(torch.zeros(8, 8, 8), bad, 4, check_finite=False)
    assert torch.isnan(out).any()  # skipped: the caller's promise, not checked again
