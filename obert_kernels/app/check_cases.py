"""The cases ``python -m obert_kernels check`` runs: every op on small awkward shapes, with its oracle.

Each case makes its inputs once (float64 on the CPU, from a seeded generator) together with
the float64 reference of ``ops/reference.py``, then runs the public op of
``obert_kernels.ops`` with an explicit ``backend=`` on each target (backend × device ×
F⁻¹ storage × dtype) and compares. Shapes: d not a multiple of B, B not a power of two
(13, 12, 40), k not dividing m, a partial last block; 3-5 blocks, so the Triton
interpreter runs the whole table on a CPU in about half a minute.

Tolerances, keyed by the dtype the op computes in (the values of python_tests/conftest.py):
- scores and factors: ‖out − ref‖/‖ref‖ < ``RTOL`` (float32 2e-4, float64 1e-10); the ±∞
  scores (already pruned, or N:M subsets that would revive a weight) must match exactly.
- updates (``obs_update``, ``obs_apply``): ``UPDATE_SLACK`` × RTOL (float32 10×: δw = −F⁻¹ v
  adds a product to the solve), and the newly pruned weights exactly zero.
- the Fisher inverse (``woodbury_update``, ``fisher_accumulate`` + ``fisher_invert``): SPEC §4,
  float32 no worse than twice the plain per-gradient float32 update's error on the same
  gradients + 3e-6 (``ops.naive_woodbury_update``; ``ops.reference.spec_fisher_tolerance`` says
  why the floor); float64 1e-10.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import ops
from ..ops.patterns import parse_pattern
from ..ops.reference import spec_fisher_tolerance

__all__ = ["RTOL", "UPDATE_SLACK", "FISHER_RTOL_FLOAT64", "Target", "Comparison", "Case", "all_cases", "rel_err"]

RTOL = {torch.float32: 2e-4, torch.float64: 1e-10}
UPDATE_SLACK = {torch.float32: 10.0, torch.float64: 1.0}
FISHER_RTOL_FLOAT64 = 1e-10
PATTERNS = ("unstructured", "block4", "2:4")
QUICK_PATTERNS = ("2:4",)  # groups, subsets and ±∞ scores: the pattern with the most to get wrong
UPDATE_MODES = ("obs", "joint", "none")
DAMP = 1e-2


@dataclass(frozen=True)
class Target:
    """Where one case runs: an explicit backend, a device, F⁻¹ storage ("dense" | "packed"), a dtype."""

    backend: str
    device: str
    storage: str
    dtype: torch.dtype


@dataclass
class Comparison:
    """error: the largest ‖out − ref‖/‖ref‖ over the case's outputs; problems: exact checks that failed."""

    error: float
    tolerance: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.error <= self.tolerance


@dataclass(frozen=True)
class Case:
    """One row of the table: ``op`` (as ``ops`` names it), ``variant`` (pattern, update, factors),
    ``shape`` (text); make(generator) -> inputs and references; run(inputs, target) -> Comparison."""

    op: str
    variant: str
    shape: str
    make: Callable[[torch.Generator], dict]
    run: Callable[[dict, Target], Comparison]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


# ---- inputs ---------------------------------------------------------------------------
def _grads(gen: torch.Generator, m: int, d: int) -> torch.Tensor:
    """(m, d) float64 gradients with per-coordinate scales and a shared low-rank part (correlated blocks)."""
    col = torch.exp(0.5 * torch.randn(d, generator=gen, dtype=torch.float64))
    shared = torch.randn(m, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, d, generator=gen, dtype=torch.float64)
    return (torch.randn(m, d, generator=gen, dtype=torch.float64) + 0.5 * shared) * col


def _finv(gen: torch.Generator, d: int, B: int) -> torch.Tensor:
    """A realistic F⁻¹ (ceil(d/B), B, B) float64 from random gradients."""
    return ops.fisher_inverse_ref(_grads(gen, max(2 * B, 16), d), B, DAMP)


def _pruned(gen: torch.Generator, d: int, pattern, frac: float) -> torch.Tensor:
    """bool (d,) pruning about ``frac``: whole groups for block patterns, single weights otherwise."""
    if pattern.kind == "block":
        return (torch.rand(d // pattern.group_size, generator=gen) < frac).repeat_interleave(pattern.group_size)
    return torch.rand(d, generator=gen) < frac


def _candidates(gen: torch.Generator, d: int, pattern, frac: float) -> torch.Tensor:
    """bool (d,) made of whole scored candidates (a weight, a block4 group, one N-subset of an
    N:M group): masks whose update the factors give (``ops.obs_direction``)."""
    if not pattern.is_nm:
        return _pruned(gen, d, pattern, frac)
    groups = torch.zeros(d // pattern.group_size, pattern.group_size, dtype=torch.bool)
    chosen = torch.randint(len(pattern.subsets), (groups.shape[0],), generator=gen)
    for q in torch.nonzero(torch.rand(groups.shape[0], generator=gen) < frac).flatten().tolist():
        groups[q, list(pattern.subsets[chosen[q]])] = True
    return groups.reshape(-1)


def _finv_on(finv: torch.Tensor, t: Target) -> torch.Tensor:
    f = finv.to(t.device, t.dtype)
    return ops.pack_upper(f) if t.storage == "packed" else f


def _dense(finv: torch.Tensor) -> torch.Tensor:
    return ops.unpack_upper(finv) if finv.dim() == 2 else finv


# ---- the Fisher inverse ---------------------------------------------------------------
def _make_fisher(d: int, B: int, m: int, k: int):
    def make(gen):
        grads = _grads(gen, m, d)
        ref = ops.fisher_inverse_ref(grads, B, DAMP)
        naive = ops.init_finv(ref.shape[0], B, DAMP)
        for chunk in grads.float().split(k):
            ops.naive_woodbury_update(naive, chunk, m)
        return {"grads": grads, "ref": ref, "B": B, "m": m, "k": k, "naive_err": rel_err(naive, ref)}

    return make


def _fisher_tolerance(p: dict, dtype: torch.dtype) -> float:
    return FISHER_RTOL_FLOAT64 if dtype == torch.float64 else spec_fisher_tolerance(p["naive_err"])


def _run_woodbury(p: dict, t: Target) -> Comparison:
    init = ops.init_finv_packed if t.storage == "packed" else ops.init_finv
    finv = init(p["ref"].shape[0], p["B"], DAMP, dtype=t.dtype, device=t.device)
    for chunk in p["grads"].split(p["k"]):
        ops.woodbury_update(finv, chunk.to(t.device, t.dtype), p["m"], backend=t.backend)
    return Comparison(rel_err(_dense(finv), p["ref"]), _fisher_tolerance(p, t.dtype))


def _run_direct(p: dict, t: Target) -> Comparison:
    fisher = torch.zeros(p["ref"].shape, dtype=t.dtype, device=t.device)
    fisher = ops.pack_upper(fisher) if t.storage == "packed" else fisher
    for chunk in p["grads"].split(p["k"]):
        ops.fisher_accumulate(fisher, chunk.to(t.device, t.dtype), p["m"], backend=t.backend)
    ops.fisher_invert(fisher, DAMP, backend=t.backend)
    return Comparison(rel_err(_dense(fisher), p["ref"]), _fisher_tolerance(p, t.dtype))


# ---- scores ---------------------------------------------------------------------------
def _shape_for(pattern) -> tuple[int, int]:
    """(d, B): B = 13 for single weights, 12 for groups of 4; 3½ blocks, groups aligned."""
    return (3 * 13 + 7, 13) if pattern.group_size == 1 else (3 * 12 + 8, 12)


def _make_scores(pattern):
    def make(gen):
        d, B = _shape_for(pattern)
        finv, w = _finv(gen, d, B), torch.randn(d, generator=gen, dtype=torch.float64)
        pruned = _pruned(gen, d, pattern, 0.2)
        return {"finv": finv, "w": w, "pruned": pruned, "ref": ops.obs_scores_ref(w, finv, pattern, pruned),
                "factors_ref": ops.obs_factors_ref(w, finv, pattern)}

    return make


def _compare_scores(out: torch.Tensor, ref: torch.Tensor, tolerance: float) -> Comparison:
    out = out.detach().double().cpu()
    if out.shape != ref.shape:
        return Comparison(float("inf"), tolerance, [f"scores have shape {tuple(out.shape)}, the reference {tuple(ref.shape)}"])
    finite, problems = torch.isfinite(ref), []
    if not torch.equal(torch.isfinite(out), finite):
        problems.append("scores are ±inf where the reference is finite, or finite where it is ±inf")
    elif not torch.equal(out[~finite], ref[~finite]):
        problems.append("scores have the wrong sign of infinity")
    both = finite & torch.isfinite(out)
    return Comparison(rel_err(out[both], ref[both]), tolerance, problems)


def _run_scores(pattern, with_factors: bool):
    def run(p: dict, t: Target) -> Comparison:
        out = ops.obs_scores(p["w"].to(t.device, t.dtype), _finv_on(p["finv"], t), pattern, p["pruned"].to(t.device),
                             return_factors=with_factors, backend=t.backend)
        scores, factors = out if with_factors else (out, None)
        result = _compare_scores(scores, p["ref"], RTOL[t.dtype])
        if factors is not None:
            if tuple(factors.shape) != tuple(p["factors_ref"].shape):
                result.problems.append(f"factors have shape {tuple(factors.shape)}, the reference {tuple(p['factors_ref'].shape)}")
            else:
                result.error = max(result.error, rel_err(factors, p["factors_ref"]))
        return result

    return run


# ---- updates --------------------------------------------------------------------------
def _make_update(pattern, update: str, whole_candidates: bool = False):
    def make(gen):
        d, B = _shape_for(pattern)
        finv, w = _finv(gen, d, B), torch.randn(d, generator=gen, dtype=torch.float64)
        new = (_candidates if whole_candidates else _pruned)(gen, d, pattern, 0.3)
        p = {"finv": finv, "w": w, "new": new, "ref": ops.obs_update_ref(w, finv, new, pattern, update)}
        if whole_candidates:
            p["factors"] = ops.obs_factors_ref(w, finv, pattern)
            if ops.obs_direction(p["factors"], new, pattern) is None:  # would solve instead of applying
                raise AssertionError(f"the obs_apply case's mask is not made of whole {pattern.name} candidates")
        return p

    return make


def _run_update(pattern, update: str):
    def run(p: dict, t: Target) -> Comparison:
        out = p["w"].to(t.device, t.dtype).clone()
        factors = p["factors"].to(t.device, t.dtype) if "factors" in p else None
        ops.obs_update(out, _finv_on(p["finv"], t), p["new"].to(t.device), pattern, update, factors=factors, backend=t.backend)
        out = out.cpu()
        problems = [] if bool((out[p["new"]] == 0).all()) else ["newly pruned weights are not exactly zero"]
        return Comparison(rel_err(out, p["ref"]), RTOL[t.dtype] * UPDATE_SLACK[t.dtype], problems)

    return run


# ---- sequential OBS ---------------------------------------------------------------------
def _make_sequential(pattern):
    def make(gen):
        d, B = _shape_for(pattern)
        finv, w = _finv(gen, d, B), torch.randn(d, generator=gen, dtype=torch.float64)
        pruned = _pruned(gen, d, pattern, 0.2)
        order, cum = ops.sequential_order_ref(w, finv, pattern, pruned)
        return {"finv": finv, "w": w, "pruned": pruned, "order": order, "cum": cum}

    return make


def _compare_orders(order, cum, ref_order, ref_cum, tolerance: float) -> Comparison:
    """Same greedy orders, except that a block may part from the reference at a float near-tie:
    where it does, the losses there must agree; error: over every step both took alike."""
    order, cum = order.cpu(), cum.double().cpu()
    if order.shape != ref_order.shape:
        return Comparison(float("inf"), tolerance, [f"order has shape {tuple(order.shape)}, the reference {tuple(ref_order.shape)}"])
    same = torch.cumprod((order == ref_order).long(), dim=1).bool()  # the common prefix of each block
    parted = (~same).any(dim=1)
    at = (~same).long().argmax(dim=1)
    rows = torch.arange(order.shape[0])
    near_tie = (cum[rows, at] - ref_cum[rows, at]).abs() <= tolerance * ref_cum[rows, at].abs() + 1e-12
    problems = [] if bool((near_tie | ~parted).all()) else ["a block's greedy order parts from the reference beyond a near-tie"]
    both = same & torch.isfinite(ref_cum)
    if not torch.equal(torch.isfinite(cum[same]), torch.isfinite(ref_cum[same])):
        problems.append("cumulative losses are +inf where the reference is finite, or finite where it is +inf")
    return Comparison(rel_err(cum[both], ref_cum[both]), tolerance, problems)


def _run_sequential(pattern):
    def run(p: dict, t: Target) -> Comparison:
        order, cum = ops.sequential_order(p["w"].to(t.device, t.dtype), _finv_on(p["finv"], t), pattern,
                                          p["pruned"].to(t.device), backend=t.backend)
        return _compare_orders(order, cum, p["order"], p["cum"], RTOL[t.dtype])

    return run


# ---- the table's rows -----------------------------------------------------------------
def _shape_text(pattern) -> str:
    d, B = _shape_for(pattern)
    return f"d={d} B={B}"


def all_cases(quick: bool = False) -> list[Case]:
    """Every op: the Fisher inverse both ways, scores (each pattern, with and without factors),
    the update (each pattern × obs/joint/none), obs_apply (each pattern, via factors) and the
    sequential greedy order (each pattern)."""
    cases = [Case("woodbury_update", "", "d=46 B=13 m=24 k=7", _make_fisher(46, 13, 24, 7), _run_woodbury),
             Case("fisher_accumulate+fisher_invert", "direct path", "d=103 B=40 m=48 k=20",
                  _make_fisher(103, 40, 48, 20), _run_direct)]
    for name in QUICK_PATTERNS if quick else PATTERNS:
        pattern = parse_pattern(name)
        shape = _shape_text(pattern)
        cases += [Case("obs_scores", name, shape, _make_scores(pattern), _run_scores(pattern, False)),
                  Case("obs_scores", f"{name} +factors", shape, _make_scores(pattern), _run_scores(pattern, True))]
        cases += [Case("obs_update", f"{name} {u}", shape, _make_update(pattern, u), _run_update(pattern, u))
                  for u in UPDATE_MODES]
        cases.append(Case("obs_apply", f"{name} obs_update(factors=)", shape,
                          _make_update(pattern, "obs", whole_candidates=True), _run_update(pattern, "obs")))
        cases.append(Case("sequential_order", name, shape, _make_sequential(pattern), _run_sequential(pattern)))
    return cases
