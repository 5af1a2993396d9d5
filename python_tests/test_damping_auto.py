"""Issue 12: one λ under a global threshold, `auto` by the prune step's held-out loss increase,
the per-tensor collapse guard and cap."""
import math
import warnings

import pytest
import torch

from obert_kernels import FisherPruner, ops
from obert_kernels.core import damping as dmp
from obert_kernels.core.damping import AutoDamp, parse_damp
from obert_kernels.core.report import PruneReport, TensorReport
from obert_kernels.core.selection import count_for, select_global, select_lowest_capped

from conftest import rel_err


def _fed(params, grads, **kw):
    """A FisherPruner over ``params`` (name -> tensor) fed ``grads`` (a list of name -> tensor)."""
    kw = {"block_size": 8, "num_grads": len(grads), "chunk_size": 5, "verbose": False, **kw}
    p = FisherPruner(params, **kw)
    for g in grads:
        p.add_grads(g)
    return p


def _case(seed_value, sizes=(29, 40), m=30, scales=(1.0, 1e-2)):
    """Tensors whose gradients differ in scale by 100x: per-tensor and global λ then differ."""
    gen = torch.Generator().manual_seed(seed_value)
    params = {f"t{i}": torch.randn(d, generator=gen) for i, d in enumerate(sizes)}
    grads = [{f"t{i}": torch.randn(d, generator=gen) * s for i, (d, s) in enumerate(zip(sizes, scales))} for _ in range(m)]
    return params, grads


def test_string_damps_follow_the_selection():
    assert parse_damp("rel:0.01", global_sparsity=True).per == "global"
    assert parse_damp("rel:0.01").per == "tensor" and parse_damp("rel:0.01:tensor", True).per == "tensor"
    assert parse_damp("auto", True).per == "global" and parse_damp("auto", False).per == "tensor"
    assert parse_damp("rel:1e-2:global").spec == "rel:0.01:global"
    auto = parse_damp("auto:global:block:min")
    assert (auto.criterion, auto.rule, auto.spec) == ("block", "min", "auto:global:block:min")
    assert parse_damp(auto.spec).spec == auto.spec
    default = parse_damp("auto", True)
    assert (default.criterion, default.rule, default.spec) == ("full", "1se", "auto:global")
    for bad in ("auto:global:loud", "auto:global:full:max", "rel:0.1:everywhere"):
        with pytest.raises(ValueError):
            parse_damp(bad)
    assert FisherPruner({"w": torch.randn(16)}, block_size=8, damp="rel:0.1", verbose=False).damping.per == "global"
    assert FisherPruner({"w": torch.randn(16)}, block_size=8, damp="rel:0.1", global_sparsity=False,
                        verbose=False).damping.per == "tensor"


@pytest.mark.parametrize("method", ["direct", "woodbury"])
def test_global_relative_damp_is_one_lambda_for_every_tensor(seed, method):
    """λ = α × mean Fisher diagonal over all live weights of all tensors, the same for each;
    F⁻¹ of each tensor against float64 with that λ (Woodbury: diagonal of the first chunk)."""
    B, alpha = 8, 0.05
    params, grads = _case(seed)
    p = _fed(params, grads, damp="rel:0.05", fisher_method=method)
    source = grads[:5] if method == "woodbury" else grads
    diag_sum = sum(float((torch.stack([g[n] for g in source]).double() ** 2).mean(0).sum()) for n in params)
    lam = alpha * diag_sum / sum(t.numel() for t in params.values())
    for name, w in params.items():
        g64 = torch.stack([g[name] for g in grads]).double()
        nb = -(-w.numel() // B)
        padded = torch.nn.functional.pad(g64, (0, nb * B - w.numel()))
        ref = torch.stack([ops.fisher_inverse_ref(padded[:, b * B : (b + 1) * B], B, lam)[0] for b in range(nb)])
        assert rel_err(p.fisher_inverse(name), ref) < 1e-4
    per_tensor = _fed(params, grads, damp="rel:0.05:tensor", fisher_method=method)
    assert rel_err(per_tensor.fisher_inverse("t1"), p.fisher_inverse("t1")) > 0.1  # the two policies differ here


def _reference_criterion(params, grads, B, alpha, target, k, per_grad_sum=True):
    """float64 reimplementation of the "full" criterion for unstructured obs, global selection,
    every block sampled, nothing pruned before: (1/2k) Σ_j (Σ_b g_jᵀΔw_b)²."""
    names = list(params)
    m = len(grads)
    rest, held = grads[: m - k], grads[m - k :]
    w_all, g_rest, g_held = [], [], []
    for n in names:
        d = params[n].numel()
        nb = -(-d // B)
        pad = lambda t: torch.nn.functional.pad(t.double(), (0, nb * B - d))  # noqa: E731
        w_all.append(pad(params[n]).view(nb, B))
        g_rest.append(torch.stack([pad(g[n]) for g in rest]).view(m - k, nb, B))
        g_held.append(torch.stack([pad(g[n]) for g in held]).view(k, nb, B))
    w, gr, gh = torch.cat(w_all), torch.cat(g_rest, 1), torch.cat(g_held, 1)
    real = torch.cat([torch.arange(-(-params[n].numel() // B) * B).view(-1, B) < params[n].numel() for n in names])
    f_rest = torch.einsum("mbi,mbj->bij", gr, gr) / (m - k)
    lam = alpha * (torch.einsum("mbi,mbi->bi", torch.cat([gr, gh]), torch.cat([gr, gh])) / m)[real].mean()
    finv = torch.linalg.inv(f_rest + lam * torch.eye(B, dtype=torch.float64))
    diag = finv.diagonal(dim1=1, dim2=2)
    scores = (w ** 2 / (2 * diag)).masked_fill(~real, -math.inf).reshape(-1)
    count = count_for(target, int(real.sum())) + int((~real).sum())
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen[torch.argsort(scores, stable=True)[:count]] = True
    chosen = chosen.view_as(w) & real
    dw = -torch.einsum("bij,bj->bi", finv, torch.where(chosen, w / diag, 0.0))
    dw = torch.where(chosen, -w, dw)
    dots = torch.einsum("kbi,bi->kb", gh, dw)
    return float((dots.sum(1) ** 2).sum() / (2 * k))


def test_auto_scores_the_prune_step_and_picks_the_least(seed):
    """auto's criterion for each candidate equals a float64 reimplementation (selection at the
    step's target, obs update, held-out (1/2k)Σ(gᵀΔw)²), and the least one is chosen, ×(m−k)/m."""
    params, grads = _case(seed, sizes=(29, 40), m=40, scales=(1.0, 0.3))
    candidates = (1e-3, 1e-2, 1e-1, 1.0)
    p = _fed({n: t.clone() for n, t in params.items()}, grads,
             damp=AutoDamp(per="global", candidates=candidates, rule="min"), chunk_size=8)
    p.prune(0.6)
    k = p.chunk_size
    ref = {a: _reference_criterion(params, grads, 8, a, 0.6, k) for a in candidates}
    for a in candidates:
        assert p.damping.scores[a] == pytest.approx(ref[a], rel=1e-3), a
    best = min(ref, key=ref.get)
    assert p.damping.chosen == pytest.approx(best * (len(grads) - k) / len(grads))
    assert len(set(round(v, 12) for v in ref.values())) > 1  # the candidates are told apart
    # the default rule "1se" on the same scores: _pick over the per-gradient terms (tested below)
    q = _fed({n: t.clone() for n, t in params.items()}, grads, damp=AutoDamp(per="global", candidates=candidates),
             chunk_size=8)
    q.prune(0.6)
    assert q.damping.scores == p.damping.scores and q.damping.score_terms.shape == (len(candidates), k)
    assert q.damping.chosen == pytest.approx(dmp._pick(q.damping.scores, q.damping.score_terms, "1se")
                                             * (len(grads) - k) / len(grads))
    assert q.damping.chosen >= p.damping.chosen


def test_auto_is_deterministic_and_its_sample_seeded(seed):
    params, grads = _case(seed, sizes=(64, 40), m=24, scales=(1.0, 0.3))

    def run(sample_seed):
        p = _fed({n: t.clone() for n, t in params.items()}, grads,
                 damp=AutoDamp(per="global", max_blocks=5, seed=sample_seed))
        p.prune(0.5)
        return p.damping.scores, p.masks

    (s1, m1), (s2, m2) = run(3), run(3)
    assert s1 == s2 and all(torch.equal(m1[n], m2[n]) for n in m1)
    assert run(4)[0] != s1  # another sample of 5 of the 13 blocks scores differently


def test_auto_keeps_its_inverses_between_passes_or_recomputes_them_alike(seed, monkeypatch):
    """The criterion is the same whether the first pass's F⁻¹ are kept or computed again (too
    large to keep), with slices smaller than the sample so that both passes loop."""
    from obert_kernels.core import damping_cv

    params, grads = _case(seed, sizes=(64, 40), m=24, scales=(1.0, 0.3))
    monkeypatch.setattr(dmp, "FIT_SLICE", 3)

    def scores():
        p = _fed({n: t.clone() for n, t in params.items()}, grads, damp=AutoDamp(per="global"))
        p.prune(0.5)
        return p.damping.scores, p.damping.score_terms, p.masks

    kept = scores()
    monkeypatch.setattr(damping_cv, "KEEP_INVERSES_BYTES", 0)
    again = scores()
    assert kept[0] == again[0] and torch.equal(kept[1], again[1])
    assert all(torch.equal(kept[2][n], again[2][n]) for n in kept[2])


def test_one_standard_error_rule():
    """rule "1se": the largest α whose paired excess over the least is within one standard error."""
    cands = [1e-3, 1e-2, 1e-1, 1.0]
    base = torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=torch.float64)
    terms = torch.stack([base, base + torch.tensor([0.6, -0.5, 0.5, -0.5]), base + 0.2, base + 5.0])
    values = dict(zip(cands, terms.mean(1).tolist()))
    assert dmp._pick(values, terms, "min") == 1e-3
    # 1e-2: excess 0 ± 0.29 (within); 1e-1: excess 0.2 ± 0 (not within); 1: excess 5 (not within)
    assert dmp._pick(values, terms, "1se") == 1e-2
    terms[2] = base + torch.tensor([0.3, -0.3, 0.3, -0.1])  # excess 0.05 ± 0.15: within
    assert dmp._pick(dict(zip(cands, terms.mean(1).tolist())), terms, "1se") == 1e-1
    # "1se1d": the same, but never more than a decade above the least (1e-3 → at most 1e-2)
    assert dmp._pick(dict(zip(cands, terms.mean(1).tolist())), terms, "1se1d") == 1e-2
    terms[3] = base + torch.tensor([0.1, -0.1, 0.1, 0.0])  # 1: excess 0.025 ± 0.048, within, but three decades up
    values = dict(zip(cands, terms.mean(1).tolist()))
    assert dmp._pick(values, terms, "1se") == 1.0 and dmp._pick(values, terms, "1se1d") == 1e-2


def _greedy_capped(flat, sizes, count, cap):
    limits = [math.floor(cap * n + 1e-9) for n in sizes]
    owner = [t for t, n in enumerate(sizes) for _ in range(n)]
    taken, mask = [0] * len(sizes), torch.zeros(len(flat), dtype=torch.bool)
    for i in sorted(range(len(flat)), key=lambda i: (float(flat[i]), i)):
        if int(mask.sum()) == count:
            break
        if taken[owner[i]] < limits[owner[i]]:
            taken[owner[i]] += 1
            mask[i] = True
    return mask


@pytest.mark.parametrize("cap", [0.3, 0.55, 0.9])
def test_capped_selection_is_exact_and_greedy(seed, cap):
    sizes = [13, 40, 7]
    flat = torch.cat([torch.randn(13) - 2.0, torch.randn(40), torch.randn(7) + 1.0])
    count = count_for(0.5, sum(sizes))
    got = select_lowest_capped(flat, sizes, count, cap) if cap * sum(sizes) >= count else None
    if got is None:
        return
    assert int(got.sum()) == count
    assert torch.equal(got, _greedy_capped(flat, sizes, count, cap))
    for part, n in zip(got.split(sizes), sizes):
        assert int(part.sum()) <= math.floor(cap * n)
    with pytest.raises(ValueError, match="fewer than"):
        select_global({"a": torch.randn(10), "b": torch.randn(10)}, 0.8, 0.5)


def _lopsided(seed_value):
    """Tensor "small" of tiny weights: a global selection takes all of it at 60%."""
    gen = torch.Generator().manual_seed(seed_value)
    params = {"small": torch.randn(40, generator=gen) * 1e-3, "big": torch.randn(60, generator=gen)}
    grads = [{n: torch.randn(t.shape, generator=gen) for n, t in params.items()} for _ in range(12)]
    return params, grads


def test_collapse_warns_and_the_cap_holds(seed):
    params, grads = _lopsided(seed)
    p = _fed({n: t.clone() for n, t in params.items()}, grads, damp="rel:0.1")
    with pytest.warns(UserWarning, match=r"above 99%: small \(100\.00%\)"):
        report = p.prune(0.6)
    assert "above 95%: small (100.00%)" in str(report) and report.to_dict()["tensor_summary"].startswith("per-tensor")
    capped = _fed({n: t.clone() for n, t in params.items()}, grads, damp="rel:0.1", max_tensor_sparsity=0.75)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = capped.prune(0.6)
    assert report.tensors["small"].pruned == 30 and report.num_pruned == 60  # exact total; the rest from "big"
    assert report.tensors["big"].pruned == 30
    with pytest.raises(ValueError, match="max_tensor_sparsity"):
        FisherPruner(params, max_tensor_sparsity=1.5, verbose=False)
    with pytest.raises(ValueError, match="sequential"):
        FisherPruner(params, max_tensor_sparsity=0.9, update="sequential", verbose=False)


def test_per_tensor_summary_is_compact():
    r = PruneReport(0.5, "unstructured", "obs", True, "torch", 0.0,
                    {"a": TensorReport(100, 10, 10), "b": TensorReport(100, 50, 50), "c": TensorReport(100, 97, 97)})
    assert r.tensor_summary() == "per-tensor sparsity min 10.0% / median 50.0% / max 97.0%; above 95%: c (97.00%)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dmp_report = PruneReport(0.5, "unstructured", "obs", False, "torch", 0.0, {"a": TensorReport(10, 10, 10)})
        from obert_kernels.core.report import warn_collapsed

        warn_collapsed(dmp_report)  # per-tensor selection: the user asked for that sparsity; no warning
