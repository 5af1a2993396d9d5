"""Fault injection (issue 14): every public entry point that changes state, with an exception
injected at each internal stage, leaves weights, masks, history, damping and the collected
gradients as before the call, and the same call then succeeds with the result of a run that
was never interrupted (bit for bit).

An injected fault raises either before the stage's real function runs, or after it ran
(its in-place writes done): the second is what a KeyboardInterrupt arriving during a long
kernel looks like, since Python raises it at the next bytecode after the kernel returns.
"""
import copy
import itertools
import signal

import pytest
import torch
from conftest import random_grads
from torch import nn

import obert_kernels.core.damping as damping_mod
import obert_kernels.core.fisher_state as fisher_state
import obert_kernels.core.grad_buffer as grad_buffer
import obert_kernels.core.pruner as pruner_mod
import obert_kernels.core.selection as selection
import obert_kernels.core.weight_update as weight_update
from obert_kernels import FisherPruner, GradualSchedule, one_shot_prune, ops
from obert_kernels.core.damping_cv import prune_step
from obert_kernels.core.masks import PrunedMasks
from obert_kernels.ops.backends import cpp as cpp_backend

SHAPES = ((7, 12), (5, 20), (3, 4, 2, 2))  # 84 + 100 + 48 weights: 11 + 13 + 6 = 30 blocks of 8
M, K = 12, 4  # gradients per step, chunk size: 3 chunks


class Injected(Exception):
    """The fault the tests inject."""


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    """Several flush and inversion slices even on these tiny tensors (30 blocks): 7 per slice."""
    monkeypatch.setattr(fisher_state, "FLUSH_SLICE_BYTES", 7 * 8 * 8 * 4)  # 7 dense blocks of B = 8
    monkeypatch.setattr(damping_mod, "INVERT_SLICE", 7)


@pytest.fixture
def sliced_flush(monkeypatch):
    """The flush path of ops that write in several calls (Woodbury, packed, GPU kernels): slices
    backed up one by one, even for the CPU's dense direct build, which otherwise applies a chunk
    in one write (fisher_state.applies_in_one_write)."""
    monkeypatch.setattr(fisher_state, "applies_in_one_write", lambda *args: False)


def make_params(dtype=torch.float32):
    return {f"t{i}": torch.randn(*s, dtype=dtype) for i, s in enumerate(SHAPES)}


def make_grads(params, m=M):
    g = {n: random_grads(m, t.numel()).reshape(m, *t.shape).to(t.dtype) for n, t in params.items()}
    return [{n: g[n][i] for n in params} for i in range(m)]


def make_pruner(params, **kw):
    kw = {"block_size": 8, "num_grads": M, "chunk_size": K, "damp": 1e-2, "backend": "torch", "verbose": False, **kw}
    return FisherPruner(params, **kw)


def inject(monkeypatch, owner, name, *, nth=1, after=False, exc=Injected):
    """Make ``owner.name`` raise ``exc`` at its nth call, before or after running the real one."""
    real = getattr(owner, name)
    calls = itertools.count(1)

    def faulty(*args, **kwargs):
        hit = next(calls) == nth
        if hit and not after:
            raise exc("injected")
        out = real(*args, **kwargs)
        if hit:
            raise exc("injected")
        return out

    monkeypatch.setattr(owner, name, faulty)


def fisher_of(p, target=None):
    """What the Fisher state the pruner holds will give the next prune(), computed on a copy:
    (F⁻¹ blocks, collected), or None. A flush or an inversion that stopped half-way resumes
    there, so the F⁻¹ is the same as if it had never stopped."""
    if p._state is None:
        return None
    state = copy.deepcopy(p._state)
    step = None if target is None else lambda: prune_step(  # noqa: E731 - what prune(target) gives damp="auto"
        p._tracked.pieces, p._tracked.float32_weights(), target, state.config, p.local_num_blocks, p.device, p._shard)
    try:
        blocks = state.finalize(p._layout, step)
    except FloatingPointError:  # a non-finite F (overflowing gradients): compared as it is
        blocks = state.fisher.blocks
    return blocks.clone(), state.collected


def snapshot(p, params, target=None):
    return {
        "weights": {n: t.detach().clone() for n, t in params.items()},
        "masks": {n: m.clone() for n, m in p.masks.items()},
        "history": [r.to_dict() for r in p.history],
        "collected": p.num_collected,
        "damping": dict(vars(p.damping)),
        "fisher": fisher_of(p, target),
    }


def _same_value(x, y) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
    return x == y


def assert_same(a, b):
    for n in a["weights"]:
        assert torch.equal(a["weights"][n], b["weights"][n]), n
        assert torch.equal(a["masks"][n], b["masks"][n]), n
    assert a["history"] == b["history"] and a["collected"] == b["collected"]
    assert a["damping"].keys() == b["damping"].keys()
    assert all(_same_value(a["damping"][k], b["damping"][k]) for k in a["damping"]), (a["damping"], b["damping"])
    if a["fisher"] is None or b["fisher"] is None:
        assert a["fisher"] is b["fisher"] is None
    else:
        assert torch.equal(a["fisher"][0], b["fisher"][0]) and a["fisher"][1] == b["fisher"][1]


def final(p, params):
    return {n: t.detach().clone() for n, t in params.items()}, {n: m.clone() for n, m in p.masks.items()}


def assert_final_equal(a, b):
    for n in a[0]:
        assert torch.equal(a[0][n], b[0][n]) and torch.equal(a[1][n], b[1][n]), n


def run_uninterrupted(params0, grads, sparsity, steps=1, **kw):
    params = copy.deepcopy(params0)
    p = make_pruner(params, **kw)
    for s in range(steps):
        for g in grads:
            p.add_grads(g)
        p.prune(sparsity * (s + 1) / steps)
    return final(p, params)


# ---- add_grads ----------------------------------------------------------------------------
ADD_STAGES = [  # (owner, name, nth, after, pruner kwargs): a fault in the 5th add_grads, which flushes chunk 1
    (pruner_mod, "check_all_finite", 1, False, {}),  # checking the gradients, before anything is written
    (grad_buffer, "write_row", 2, False, {}),  # copying: the 1st tensor's row written
    (grad_buffer, "write_row", 3, True, {}),  # copying: all rows written, counters not yet
    (ops, "fisher_accumulate", 1, False, {}),  # the flush's one write (dense, direct, torch), before it
    (ops, "fisher_accumulate", 1, False, {"backend": "auto", "fisher_storage": "dense"}),  # the same on cpp (upper triangles only)
    (ops, "fisher_accumulate", 1, False, {"backend": "auto"}),  # the default on cpp: packed rows, one write
    (grad_buffer.GradBuffer, "mark_applied", 1, False, {}),  # the chunk applied and recorded, not marked
    (ops, "fisher_accumulate", 2, False, {"sliced": True}),  # the flush's 2nd slice, before it writes
    (ops, "fisher_accumulate", 3, True, {"sliced": True}),  # the flush's 3rd slice, after it wrote
    (grad_buffer.GradBuffer, "mark_progress", 2, False, {"sliced": True}),  # slice 2 applied, not recorded
    (grad_buffer.GradBuffer, "mark_applied", 1, False, {"sliced": True}),  # every slice applied, chunk not marked
    (ops, "woodbury_update", 2, True, {"fisher_method": "woodbury"}),
    (damping_mod.AbsoluteDamp, "start_woodbury", 1, True, {"fisher_method": "woodbury"}),  # F₀⁻¹ set, then a fault
    (damping_mod.RelativeDamp, "start_woodbury", 1, True, {"fisher_method": "woodbury", "damp": "rel:0.1"}),
    (ops, "fisher_accumulate", 1, True, {"fisher_storage": "packed", "damp": 0.1}),
]


def take_sliced(kw: dict, monkeypatch) -> dict:
    """kw without its "sliced" flag, which forces the sliced flush (see ``sliced_flush``). A case
    with backend="auto" is one for the C++ CPU kernels (upper triangles, mirrored at prune()):
    skipped where they are not built."""
    kw = dict(kw)
    if kw.pop("sliced", False):
        monkeypatch.setattr(fisher_state, "applies_in_one_write", lambda *args: False)
    if kw.get("backend") == "auto" and not cpp_backend.available():
        pytest.skip(cpp_backend.status())
    return kw


@pytest.mark.parametrize("owner,name,nth,after,kw", ADD_STAGES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_add_grads_fault_changes_nothing_and_retry_works(seed, monkeypatch, owner, name, nth, after, kw):
    kw = take_sliced(kw, monkeypatch)
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.5, **kw)
    params = copy.deepcopy(params0)
    p = make_pruner(params, **kw)
    for g in grads[:K]:  # the buffer is full: the next call flushes it before writing its own gradient
        p.add_grads(g)
    before = snapshot(p, params)
    with monkeypatch.context() as mp:
        inject(mp, owner, name, nth=nth, after=after)
        with pytest.raises(Injected):
            p.add_grads(grads[K])
    assert_same(snapshot(p, params), before)
    for g in grads[K:]:
        p.add_grads(g)
    p.prune(0.5)
    assert_final_equal(final(p, params), expected)


@pytest.mark.parametrize("backend,pruned,fault", [("torch", False, "nan"), ("auto", False, "nan"), ("auto", True, "nan"),
                                                  ("auto", False, "copy_checked"), ("auto", True, "copy_checked")])
def test_a_bad_gradient_after_a_full_chunk_changes_nothing(seed, monkeypatch, backend, pruned, fault):
    """The C++ copy ("auto" on the CPU; with keep-masks when pruned, a second step) checks while
    it copies, after the full chunk's flush: the flush stays (it resumes nothing and loses
    nothing), the refused row is scratch; the result is the same as without the refused call.
    fault "copy_checked": the copy raises after writing the row, before the counters move."""
    kw = take_sliced({"backend": backend}, monkeypatch)
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.5, steps=2 if pruned else 1, **kw)
    params = copy.deepcopy(params0)
    p = make_pruner(params, **kw)
    if pruned:
        for g in grads:
            p.add_grads(g)
        p.prune(0.25)
    for g in grads[:K]:
        p.add_grads(g)
    before = snapshot(p, params)
    bad = {n: t.clone() for n, t in grads[K].items()}
    name = sorted(bad)[-1]
    with monkeypatch.context() as mp:
        if fault == "nan":
            bad[name].view(-1)[-1] = float("nan")
            raises = pytest.raises(ValueError, match=f"gradient of {name!r} has non-finite")
        else:
            inject(mp, grad_buffer, "copy_checked", after=True)
            raises = pytest.raises(Injected)
        with raises:
            p.add_grads(bad)
    assert_same(snapshot(p, params), before)
    for g in grads[K:]:
        p.add_grads(g)
    p.prune(0.5)
    assert_final_equal(final(p, params), expected)


@pytest.mark.parametrize("owner,name,nth,after", [
    (grad_buffer, "write_row", 3, True),  # the first gradient copied, counters not yet set
    (pruner_mod, "refuse_if_too_big", 1, False),  # the memory check before the Fisher state is allocated
    (fisher_state, "GradBuffer", 1, False),  # allocating the buffer, after the Fisher blocks
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_first_add_grads_fault_leaves_no_state(seed, monkeypatch, owner, name, nth, after):
    params = make_params()
    p = make_pruner(params)
    g = make_grads(params, 1)[0]
    with monkeypatch.context() as mp:
        inject(mp, owner, name, nth=nth, after=after)
        with pytest.raises(Injected):
            p.add_grads(g)
    assert p._state is None and p.num_collected == 0
    assert p.add_grads(g) == 1


def test_add_grads_keyboard_interrupt_in_flush(seed, monkeypatch, sliced_flush):
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.4)
    params = copy.deepcopy(params0)
    p = make_pruner(params)
    for g in grads[:4]:
        p.add_grads(g)
    before = snapshot(p, params)
    with monkeypatch.context() as mp:
        inject(mp, ops, "fisher_accumulate", nth=2, after=True, exc=KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            p.add_grads(grads[4])
    assert_same(snapshot(p, params), before)
    for g in grads[4:]:
        p.add_grads(g)
    p.prune(0.4)
    assert_final_equal(final(p, params), expected)


def test_sigint_during_one_write_flush_is_held_until_recorded(seed, monkeypatch, python_sigint):
    """A real SIGINT while the one-write flush's op runs (the dense direct build on the CPU) is
    held until the chunk is recorded as applied, then raised: nothing lost or applied twice."""
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.4)
    params = copy.deepcopy(params0)
    p = make_pruner(params)
    for g in grads[:K]:
        p.add_grads(g)
    before = snapshot(p, params)
    real, calls = ops.fisher_accumulate, []

    def interrupted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(p._state.grads.counts.applied_blocks)
        signal.raise_signal(signal.SIGINT)  # delivered while the op "runs": before its record
        calls.append("not held")
        return out

    with monkeypatch.context() as mp:
        mp.setattr(ops, "fisher_accumulate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            p.add_grads(grads[K])
    assert calls == [0, "not held"]  # one call for the whole chunk, the signal held past it
    assert p._state.grads.counts.applied_blocks == p.local_num_blocks and p.num_collected == K
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert_same(snapshot(p, params), before)
    for g in grads[K:]:
        p.add_grads(g)
    p.prune(0.4)
    assert_final_equal(final(p, params), expected)


# ---- prune --------------------------------------------------------------------------------
PRUNE_STAGES = [  # (owner, name, nth, after, pruner kwargs)
    (ops, "fisher_accumulate", 1, False, {}),  # the last chunk's flush (one write), inside prune()
    (ops, "fisher_accumulate", 2, True, {"sliced": True}),  # the last chunk's flush, a slice written
    (ops, "mirror_upper", 1, True, {"backend": "auto", "fisher_storage": "dense"}),  # cpp's upper triangles mirrored, then a fault
    (ops, "fisher_invert", 2, True, {"backend": "auto", "fisher_storage": "dense"}),  # after the mirror, the inversion's 2nd slice
    (ops, "fisher_invert", 2, True, {"backend": "auto"}),  # the default on cpp: packed blocks, the inversion's 2nd slice
    (damping_mod.AutoDamp, "fit", 1, True, {"damp": "auto"}),  # λ chosen, then a fault
    (ops, "fisher_invert", 2, True, {}),  # the inversion's 2nd slice, after it wrote
    (ops, "fisher_invert", 3, True, {"damp": "rel:0.01"}),
    (ops, "fisher_invert", 2, True, {"damp": "auto"}),
    (ops, "obs_scores", 2, True, {}),  # scoring the 2nd tensor
    (selection, "select_global", 1, True, {}),
    (selection, "select_per_tensor", 1, False, {"global_sparsity": False}),
    (ops, "obs_update", 3, True, {}),  # the update of the 3rd tensor
    (ops, "obs_update", 1, True, {"update": "joint"}),
    (ops, "sequential_order", 2, True, {"update": "sequential"}),
    (weight_update, "write_tensor", 2, True, {}),  # write-back: tensors 1 and 2 written
    (weight_update, "write_tensor", 3, True, {"pattern": "block4"}),
    (PrunedMasks, "replace", 1, True, {}),  # masks committed, then a fault
    (ops, "obs_scores", 1, True, {"fisher_method": "woodbury"}),
    (weight_update, "write_tensor", 2, True, {"fisher_method": "woodbury", "damp": "rel:0.1"}),
]


@pytest.mark.parametrize("owner,name,nth,after,kw", PRUNE_STAGES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_prune_fault_changes_nothing_and_retry_works(seed, monkeypatch, owner, name, nth, after, kw):
    kw = take_sliced(kw, monkeypatch)
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.3, steps=2, **kw)
    params = copy.deepcopy(params0)
    p = make_pruner(params, **kw)
    for g in grads:  # step 1, clean: the fault hits the 2nd step, with weights already pruned
        p.add_grads(g)
    p.prune(0.15)
    for g in grads:
        p.add_grads(g)
    before = snapshot(p, params, target=0.3)
    with monkeypatch.context() as mp:
        inject(mp, owner, name, nth=nth, after=after)
        with pytest.raises(Injected):
            p.prune(0.3)
    assert_same(snapshot(p, params, target=0.3), before)
    p.prune(0.3)
    assert_final_equal(final(p, params), expected)
    assert len(p.history) == 2 and p._state is None


def test_prune_fault_in_history_append(seed):
    class FailingList(list):
        def append(self, item):
            raise Injected("injected")

    params = make_params()
    p = make_pruner(params)
    for g in make_grads(params):
        p.add_grads(g)
    p.history = FailingList()
    before = snapshot(p, params)
    with pytest.raises(Injected):
        p.prune(0.5)
    assert_same(snapshot(p, params), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_prune_keyboard_interrupt_in_write_back(seed, monkeypatch, dtype):
    params0 = make_params(dtype)
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.6)
    params = copy.deepcopy(params0)
    p = make_pruner(params)
    for g in grads:
        p.add_grads(g)
    before = snapshot(p, params)
    with monkeypatch.context() as mp:
        inject(mp, weight_update, "write_tensor", nth=2, after=True, exc=KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            p.prune(0.6)
    assert_same(snapshot(p, params), before)
    p.prune(0.6)
    assert_final_equal(final(p, params), expected)


def failed_prune(monkeypatch, owner, name, *, nth=1, after=False, damp, expected_damp=None):
    """A pruner (damp=``damp``) holding M gradients whose prune(0.5) raised at ``owner.name``'s
    nth call; returns it, the params it prunes, and the result of an uninterrupted run with
    ``expected_damp`` (default ``damp``) on the same gradients."""
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.5, damp=damp if expected_damp is None else expected_damp)
    params = copy.deepcopy(params0)
    p = make_pruner(params, damp=damp)
    for g in grads:
        p.add_grads(g)
    with monkeypatch.context() as mp:
        inject(mp, owner, name, nth=nth, after=after)
        with pytest.raises(Injected):
            p.prune(0.5)
    return p, params, expected


def test_failed_inversion_before_any_block_takes_another_damp(seed, monkeypatch):
    """A prune that failed before a block held F⁻¹ keeps F itself; setting damp then gives what a
    run with that damp from the start gives."""
    # the 1st slice written, then put back
    p, params, expected = failed_prune(monkeypatch, ops, "fisher_invert", after=True, damp=1e-2, expected_damp=0.3)
    p.damp = 0.3
    assert p.damp == 0.3 and p.num_collected == M
    p.prune(0.5)
    assert_final_equal(final(p, params), expected)
    assert "λ=0.3" in p.history[-1].damping


def test_inversion_stopped_half_way_resumes_with_its_damp(seed, monkeypatch):
    """Once a slice holds F⁻¹, λ is fixed: another damp is refused (nothing changed), fisher_inverse
    refuses a half-inverted state, and prune() resumes to the uninterrupted result."""
    p, params, expected = failed_prune(monkeypatch, ops, "fisher_invert", nth=3, after=True, damp="rel:0.01")
    with pytest.raises(ValueError, match="resumes"):
        p.damp = 0.3
    with pytest.raises(RuntimeError, match="partly inverted"):
        p.fisher_inverse("t0")
    assert p.damp == "rel:0.01:tensor" or str(p.damp).startswith("rel:0.01")
    p.prune(0.5)
    assert_final_equal(final(p, params), expected)
    assert p.history[-1].damping.startswith("λ=0.01×mean diag")


def test_overflowing_gradients_keep_the_fisher_and_reset_discards_it(seed):
    """Finite gradients whose squares overflow float32: prune() raises FloatingPointError and
    can be called again (same error), add_grads says so, reset() discards them."""
    params = make_params()
    p = make_pruner(params)
    for _ in range(M):
        p.add_grads({n: torch.full_like(t, 3e19) for n, t in params.items()})
    before = snapshot(p, params)
    for _ in range(2):
        with pytest.raises(FloatingPointError) as info:
            p.prune(0.5)
        assert_same(snapshot(p, params), before)
        assert any("reset()" in n for n in info.value.__notes__)
    with pytest.raises(RuntimeError, match="reset"):
        p.add_grads({n: torch.ones_like(t) for n, t in params.items()})
    p.reset()
    assert p.num_collected == 0
    for g in make_grads(params):
        p.add_grads(g)
    assert p.prune(0.5).sparsity == pytest.approx(0.5, abs=0.01)


def test_damp_change_refused_where_it_cannot_apply(seed):
    params = make_params()
    p = make_pruner(params, fisher_method="woodbury")
    for g in make_grads(params)[: K + 1]:  # the first chunk is applied: λ is in F₀⁻¹
        p.add_grads(g)
    with pytest.raises(ValueError, match="reset"):
        p.damp = 0.5
    assert p.damp == 1e-2
    p.reset()
    p.damp = 0.5
    assert p.damp == 0.5
    with pytest.raises(ValueError):
        p.damp = -1.0


def test_damp_auto_refused_once_a_failed_prune_freed_the_held_out_chunk(seed, monkeypatch):
    params = make_params()
    p = make_pruner(params)
    for g in make_grads(params):
        p.add_grads(g)
    with monkeypatch.context() as mp:
        inject(mp, ops, "fisher_invert", nth=1)  # F checked, buffer freed, no block inverted
        with pytest.raises(Injected):
            p.prune(0.5)
    with pytest.raises(ValueError, match="held-out"):
        p.damp = "auto"
    p.damp = "rel:0.01"  # needs no held-out gradients: fine
    assert p.prune(0.5).damping.startswith("λ=0.01×mean diag")


def test_damp_refused_after_a_failure_past_the_inversion(seed, monkeypatch):
    """A prune that failed after the inversion keeps F⁻¹ and its λ; the retry reuses both."""
    # auto's fit calls obs_scores itself: fail later, in the write-back
    p, params, expected = failed_prune(monkeypatch, weight_update, "write_tensor", damp="auto")
    with pytest.raises(ValueError, match="resumes"):
        p.damp = "rel:0.01"
    p.prune(0.5)
    assert_final_equal(final(p, params), expected)
    assert p.history[-1].damping.startswith("auto")


# ---- transaction(): what it can and cannot give back ----------------------------------------
def test_transaction_gives_back_gradients_still_in_the_buffer(seed):
    params0 = make_params()
    grads = make_grads(params0)
    expected = run_uninterrupted(params0, grads, 0.5)
    params = copy.deepcopy(params0)
    p = make_pruner(params)
    for g in grads[: K + 1]:  # chunk 1 applied, one gradient buffered
        p.add_grads(g)
    before = snapshot(p, params)
    with pytest.raises(Injected), p.transaction():
        p.add_grads(grads[K + 1])
        p.add_grads(grads[K + 2])  # both only buffered: the counters can be put back
        raise Injected("injected")
    assert_same(snapshot(p, params), before)
    for g in grads[K + 1 :]:
        p.add_grads(g)
    p.prune(0.5)
    assert_final_equal(final(p, params), expected)


def test_transaction_that_cannot_give_back_gradients_says_so(seed):
    params = make_params()
    p = make_pruner(params)
    grads = make_grads(params)
    for g in grads[:2]:
        p.add_grads(g)
    with pytest.raises(Injected) as info, p.transaction():
        for g in grads[2 : K + 2]:  # chunk 1, holding the 2 from before, is applied to F
            p.add_grads(g)
        raise Injected("injected")
    assert p.num_collected == 0 and p._state is None
    assert any("the 2 gradients collected before this call were discarded" in n for n in info.value.__notes__)


# ---- load_state_dict ----------------------------------------------------------------------
def pruned_state(params):
    p = make_pruner(copy.deepcopy(params))
    for g in make_grads(params):
        p.add_grads(g)
    p.prune(0.5)
    return p.state_dict()


@pytest.mark.parametrize("stage", ["masks", "zero_weights"])
def test_load_state_dict_fault_changes_nothing(seed, monkeypatch, stage):
    params = make_params()
    state = pruned_state(params)
    p = make_pruner(params)
    before = snapshot(p, params)
    if stage == "masks":
        inject(monkeypatch, PrunedMasks, "replace", after=True)
    else:
        def half(self):  # zero the first tensor's pruned weights, then fail
            slot = self.slots[0]
            slot.tensor.data.masked_fill_(self.pruned[slot.name].reshape(slot.tensor.shape), 0.0)
            raise Injected("injected")
        monkeypatch.setattr(PrunedMasks, "zero_pruned_weights", half)
    with pytest.raises(Injected):
        p.load_state_dict(state)
    assert_same(snapshot(p, params), before)
    monkeypatch.undo()
    p.load_state_dict(state)
    assert [r.to_dict() for r in p.history] == state["history"]


def test_load_state_dict_restores_history_and_refuses_to_drop_gradients(seed):
    params = make_params()
    state = pruned_state(params)
    p = make_pruner(params)
    p.add_grads(make_grads(params, 1)[0])
    with pytest.raises(RuntimeError, match="1 gradients collected"):
        p.load_state_dict(state)
    assert p.num_collected == 1 and p.history == []
    p.reset()
    p.load_state_dict(state)
    assert [r.to_dict() for r in p.history] == state["history"] and len(p.history) == 1
    assert str(p.history[0]).startswith("prune to 50.00%")
    bad = dict(state, history=[{"nonsense": 1}])
    with pytest.raises(ValueError, match="history"):
        make_pruner(make_params()).load_state_dict(bad)


# ---- tensors a write-back cannot serve ----------------------------------------------------
def test_tensors_sharing_memory_are_refused(seed):
    expanded = torch.randn(1, 20).expand(10, 20)  # stride 0: 200 weights in 20 cells
    with pytest.raises(ValueError, match="share memory"):
        make_pruner({"a": expanded})
    base = torch.randn(10, 20)
    with pytest.raises(ValueError, match="share memory"):
        make_pruner({"a": base[:6], "b": base[4:]})
    make_pruner({"a": base[:5], "b": base[5:], "c": torch.randn(20, 10).t()})  # disjoint views, a transpose: fine
    with torch.inference_mode():
        frozen = torch.randn(4, 8)
    with pytest.raises(ValueError, match="inference"):
        make_pruner({"a": frozen})


# ---- one_shot_prune and GradualSchedule ---------------------------------------------------
def tiny_model():
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def batch_list(n):
    return [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(n)]


ONE_SHOT_KW = {"block_size": 4, "num_grads": 6, "chunk_size": 4, "damp": 1e-2, "backend": "torch", "verbose": False,
               "progress": False, "num_recomputations": 3}


def weights_of(model):
    return {n: t.detach().clone() for n, t in model.named_parameters()}


@pytest.mark.parametrize("fault", ["loss_fn", "batches_run_out", "obs_scores", "interrupt_in_add_grads", "write_tensor"])
def test_one_shot_prune_fault_restores_the_model(seed, monkeypatch, fault):
    model0 = tiny_model()
    batches = batch_list(18)
    expected_model = copy.deepcopy(model0)
    expected = one_shot_prune(expected_model, loss_fn, batches, 0.6, **ONE_SHOT_KW)
    model = copy.deepcopy(model0)
    used, calls = batches, itertools.count(1)
    if fault == "loss_fn":
        def faulty_loss(m, b):
            if next(calls) == 9:  # step 2's 3rd gradient
                raise Injected("injected")
            return loss_fn(m, b)
    else:
        faulty_loss = loss_fn
        if fault == "batches_run_out":
            used = batches[:14]  # step 3 runs out
        elif fault == "interrupt_in_add_grads":
            inject(monkeypatch, grad_buffer, "write_row", nth=2 * 9, exc=KeyboardInterrupt)
        else:
            inject(monkeypatch, ops if fault == "obs_scores" else weight_update, fault, nth=4, after=True)
    exc = ValueError if fault == "batches_run_out" else KeyboardInterrupt if fault.startswith("interrupt") else Injected
    with pytest.raises(exc):
        one_shot_prune(model, faulty_loss, used, 0.6, **ONE_SHOT_KW)
    assert all(torch.equal(a, b) for a, b in zip(weights_of(model).values(), weights_of(model0).values()))
    assert all(t.grad is None for t in model.parameters())
    monkeypatch.undo()
    again = one_shot_prune(model, loss_fn, batches, 0.6, **ONE_SHOT_KW)
    assert all(torch.equal(a, b) for a, b in zip(weights_of(model).values(), weights_of(expected_model).values()))
    assert [r.num_pruned for r in again.history] == [r.num_pruned for r in expected.history]


def test_prune_model_fault_restores_the_model(seed):
    """The CLI's metered one-shot (recipes.prune_model) is all or nothing too: batches running
    out in step 3 of 3 leave the model's weights as before."""
    from obert_kernels.recipes.prune_model import prune_model

    model = tiny_model()
    before = weights_of(model)
    kw = {k: v for k, v in ONE_SHOT_KW.items() if k not in ("num_recomputations",)}
    with pytest.raises(ValueError, match="ran out"):
        prune_model(model, list(model.named_parameters())[::2], "obs", 0.6, loss_fn=loss_fn, batches=batch_list(14),
                    num_recomputations=3, **kw)
    assert all(torch.equal(a, b) for a, b in zip(weights_of(model).values(), before.values()))


def schedule_for(model, fresh: bool):
    p = FisherPruner(model, block_size=4, num_grads=4, chunk_size=3, damp=1e-2, backend="torch", verbose=False)
    # fresh gradients from one repeated batch: a retry draws what the uninterrupted run drew
    kw = {"loss_fn": loss_fn, "batches": itertools.repeat(batch_list(1)[0]), "model": model} if fresh else {}
    return GradualSchedule(p, final_sparsity=0.5, start_step=0, end_step=8, update_every=4, **kw)


def reports_without_time(reports):
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in reports]


def schedule_state(model, sched):
    return (weights_of(model), {n: m.clone() for n, m in sched.pruner.masks.items()},
            reports_without_time(sched.pruner.history), reports_without_time(sched.reports), sched.pruner.num_collected)


def failing_loss(model, batch):
    raise Injected("injected")


def run_schedule(model, sched, grads, monkeypatch, fault):
    """Steps 0..4 (pruning steps 0 and 4), the fault (if any) at step 4, then step 4 again.
    Without fresh gradients the loop feeds ``grads`` before each pruning step."""
    for t in range(5):
        if sched._batch_iter is None and t in (0, 1, 2, 3):
            for g in grads if t == 0 else grads[t - 1 : t]:
                sched.pruner.add_grads(g)
        if t == 3 and sched._batch_iter is None:
            sched.pruner.add_grads(grads[3])
        if t == 4 and fault is not None:
            before = schedule_state(model, sched)
            with monkeypatch.context() as mp:
                if fault == "loss_fn":
                    mp.setattr(sched, "loss_fn", failing_loss)
                else:
                    inject(mp, ops, "obs_scores", nth=2, after=True,
                           exc=KeyboardInterrupt if fault == "interrupt" else Injected)
                with pytest.raises((Injected, KeyboardInterrupt)):
                    sched.step(t)
            after = schedule_state(model, sched)
            assert all(torch.equal(before[0][n], after[0][n]) for n in before[0])
            assert all(torch.equal(before[1][n], after[1][n]) for n in before[1])
            assert before[2:] == after[2:]
        sched.step(t)
    return schedule_state(model, sched)


@pytest.mark.parametrize("fresh,fault", [(True, "loss_fn"), (True, "obs_scores"), (False, "obs_scores"),
                                         (False, "interrupt")])
def test_gradual_step_fault_changes_nothing_and_retry_works(seed, monkeypatch, fresh, fault):
    model0 = tiny_model()
    torch.manual_seed(seed)
    grads = [{n: torch.randn_like(t) for n, t in model0.named_parameters() if n.endswith("weight")} for _ in range(4)]
    ref_model = copy.deepcopy(model0)
    torch.manual_seed(seed + 1)
    ref = run_schedule(ref_model, schedule_for(ref_model, fresh), grads, monkeypatch, None)
    model = copy.deepcopy(model0)
    torch.manual_seed(seed + 1)
    got = run_schedule(model, schedule_for(model, fresh), grads, monkeypatch, fault)
    assert all(torch.equal(ref[0][n], got[0][n]) for n in ref[0])
    assert all(torch.equal(ref[1][n], got[1][n]) for n in ref[1])
    assert ref[2:] == got[2:] and len(got[3]) == 2
