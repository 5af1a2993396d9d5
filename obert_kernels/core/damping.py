"""Damping of the Fisher blocks: λ of F = λI + (1/m) Σ g gᵀ, chosen so users need not tune it.

The right absolute λ scales with the gradients: on the same MiniLM it ranged from 1e-6
to 1e-12 between two losses. Three policies, all accepted as FisherPruner's ``damp=``:

- ``AbsoluteDamp(λ)`` (a plain number, or "1e-7"): the paper's fixed λ.
- ``RelativeDamp(α, per="tensor"|"block"|"global")`` ("rel:0.01", "rel:0.01:block", ...):
  λ = α · the mean diagonal of the Fisher over the live (unpruned, non-padding) weights
  of each tensor, each block, or all tensors together, so the same α means the same thing
  whatever the gradients' scale. Blocks whose diagonal is all zero (fully pruned, dead
  weights) borrow their tensor's mean, then the global mean. The strings without ``per``
  take "global" under a global threshold and "tensor" under per-tensor sparsity
  (``parse_damp``): scores that compete in one threshold must be on one scale. A weight
  with ~0 gradient scores ≈ λ w²/2; with λ per tensor, a tensor of small mean diagonal
  looked free to prune, and the digits MLP's hidden layer lost 16,291 of its 16,384
  weights at 90% (issue 12).
- ``AutoDamp(per=..., criterion="full", rule="1se")`` ("auto", "auto:global:full:min", ...):
  a relative damp whose α is chosen by the prune step itself, cross-validated on held-out
  gradients: the last chunk of k collected gradients is held out, and for each candidate α
  (13 half-decades from 1e-6 to 1) the step's own selection and update run on a seeded
  sample of up to ``max_blocks`` blocks with F_rest from the other m − k; the α whose step
  has the least predicted loss increase under the held-out gradients, ½ΔwᵀF_hoΔw, is the
  reference (``damping_cv``), and rule "1se" (the default) takes the largest α whose
  increase is within one standard error of it, paired over the k held-out gradients (rule
  "min": the least itself). With k = 32 the criterion is noisy and often flat over a decade
  or two; erring toward more damping won on the digits MLP and CNN (README, "Damping").
  The held-out chunk then joins F, which is inverted with α·(m − k)/m: the best ridge
  shrinks about as 1/samples, and F has m, not m − k (the pruner caps k at m/4 for this).
  criterion "likelihood" is the policy before issue 12 (α maximising the held-out
  gradients' Gaussian log-likelihood under F_rest + λI), kept for comparison: it optimised
  the wrong thing (α at the bottom of its grid on the digits MLP, far below magnitude pruning).

Where λ is needed:

- Direct path (``fisher_accumulate`` then ``fisher_invert``): the Fisher diagonal is known
  before inversion, so every policy applies exactly. Relative damping inverts the
  normalised blocks F/D with damp α and rescales: (F/D + αI)⁻¹/D = (F + αD·I)⁻¹, so
  ``ops.fisher_invert``'s retry-with-more-damping works in units of the mean diagonal.
- Woodbury path: F₀⁻¹ = I/λ is set before the first gradient is applied, so a relative λ
  is estimated from the diagonal of the *first chunk* of k gradients (an unbiased but
  noisier estimate of the mean diagonal); ``AutoDamp`` needs F itself and refuses the
  Woodbury path (``needs_direct``).

Inversion is done in slices of ``INVERT_SLICE`` blocks, so its temporaries (the Cholesky
factor and the inverse) are a few tens of MB instead of twice F⁻¹. A slice whose Cholesky
still fails after ``fisher_invert``'s own retries (absolute λ far below the gradients'
scale) is inverted again with a relative damp, with a warning: a prune never stops there
(only non-finite gradients, which no damping can fix, raise).
"""
from __future__ import annotations

import math
from collections.abc import Callable
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .. import ops
from ..specs import AUTO_CRITERIA, AUTO_RULES, DAMP_PER_CHOICES, check_damp_per, check_relative_damp, parse_damp_spec

if TYPE_CHECKING:  # damping_cv imports this module's neighbours; AutoDamp imports it lazily
    from . import damping_cv

__all__ = ["AbsoluteDamp", "RelativeDamp", "AutoDamp", "BlockLayout", "block_layout", "parse_damp", "Damping",
           "INVERT_SLICE", "AUTO_CRITERIA", "invert_blocks"]

# Blocks inverted per fisher_invert call: 4096 blocks of B = 50 are 41 MB of float32, so the
# Cholesky factor and inverse it allocates stay small next to F⁻¹ (212k blocks for MiniLM).
INVERT_SLICE = 4096
# Blocks per float64 slice when AutoDamp scores its candidates: its ~7 temporaries of a slice
# (B = 50: 20 MB each at 1024 blocks) are what a prune step adds on top of F⁻¹ and the
# held-out chunk; at 4096 they added ~0.6 GB to MiniLM's peak (measured, 2026-11-21).
FIT_SLICE = 1024
# "global": one λ for every tensor, α × the mean diagonal over all live weights (what the
# string forms resolve to under global selection: see ``parse_damp``)
PER_CHOICES = DAMP_PER_CHOICES
# AUTO_RULES: "min": the candidate with the least criterion; "1se": the largest α within one
# standard error (over the held-out gradients) of the least, the usual cross-validation rule for a noisy score;
# "1se1d": 1se, but at most one decade above the least (an experiment of 2026-12-01, see the README)
# α grid for AutoDamp: half decades from 1e-6 to 1 of the mean Fisher diagonal.
AUTO_CANDIDATES = tuple(10.0 ** (e / 2) for e in range(-12, 1))
# the relative damp a failed absolute one falls back to (then raised 10x per retry by fisher_invert)
FALLBACK_FRACTION = 1e-4


@dataclass
class BlockLayout:
    """Where each Fisher block sits: its tensor, and its live (unpruned, non-padding) coordinates.

    tensor_index: (nb,) int64, the tracked tensor each block belongs to; live: (nb, B) bool.
    reduce: when the blocks are sharded over ranks (obert_kernels.core.sharding), sums a
    tensor of per-tensor statistics over the ranks, in place; None on one process. A slice
    of a layout drops it: slices are used on one rank's own (e.g. fallback) paths, where a
    collective would wait for ranks that never come.
    """

    tensor_index: torch.Tensor
    live: torch.Tensor
    num_tensors: int
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __getitem__(self, sl: slice) -> "BlockLayout":
        return BlockLayout(self.tensor_index[sl], self.live[sl], self.num_tensors)


def block_layout(blocks_per_tensor: list[int], pruned: list[torch.Tensor], block_size: int, device, *,
                 tensor_ids: list[int] | None = None, num_tensors: int | None = None, reduce=None) -> BlockLayout:
    """Layout of the Fisher state: pieces in order, each cut into its own blocks of B.

    pruned: one flat bool mask (d_t,) per piece, True where pruned. Each piece is a whole
    tensor unless ``tensor_ids`` names the tensor of each (a rank's share of a tensor).
    """
    ids = list(range(len(blocks_per_tensor))) if tensor_ids is None else tensor_ids
    index, live = [], []
    for t, nb, mask in zip(ids, blocks_per_tensor, pruned):
        alive = torch.zeros(nb * block_size, dtype=torch.bool, device=device)
        alive[: mask.numel()] = ~mask.to(device)
        live.append(alive.view(nb, block_size))
        index.append(torch.full((nb,), t, dtype=torch.long, device=device))
    if not index:  # a rank that owns no block
        index, live = [torch.zeros(0, dtype=torch.long, device=device)], [torch.zeros(0, block_size, dtype=torch.bool, device=device)]
    return BlockLayout(torch.cat(index), torch.cat(live), len(ids) if num_tensors is None else num_tensors, reduce)


class Damping:
    """A damping policy; FisherPruner calls ``start_woodbury`` or ``fit`` + ``invert``."""

    needs_direct = False  # True: needs F itself (the direct Fisher build)

    @property
    def spec(self):
        raise NotImplementedError

    def describe(self) -> str:
        return str(self.spec)

    def chunk_size_for(self, num_grads: int, chunk_size: int) -> int:
        """The gradient chunk size k the pruner should use (a policy may need it smaller)."""
        return chunk_size

    def initial_finv(self, num_blocks: int, block_size: int, device) -> torch.Tensor:
        """F⁻¹ before any gradient (fisher_inverse with none collected)."""
        raise ValueError(f"damp={self.spec!r} is relative to the Fisher diagonal: collect gradients first")

    def start_woodbury(self, finv: torch.Tensor, first_chunk: torch.Tensor, layout: BlockLayout) -> None:
        """Set F₀⁻¹ = diag(1/λ) in place before the first Woodbury update; first_chunk: (nb, k, B)."""
        raise NotImplementedError

    def fit(self, fisher: torch.Tensor, heldout: torch.Tensor, num_grads: int, layout: BlockLayout,
            step: "Callable[[], damping_cv.PruneStep] | None" = None) -> None:
        """Direct path, before ``invert``: see the last chunk (already inside ``fisher``) and, when
        a prune step follows, what it will do (``step()`` builds its ``damping_cv.PruneStep``).
        No-op by default."""

    def block_scale(self, fisher: torch.Tensor, layout: BlockLayout) -> torch.Tensor | None:
        """(nb,) what λ is relative to for each block of ``fisher`` (None: an absolute λ); for
        ``invert(part, ..., scale=...)`` of a part of the blocks with the statistics of all."""
        return None

    def invert(self, fisher: torch.Tensor, layout: BlockLayout, *, backend: str = "auto",
               scale: torch.Tensor | None = None) -> None:
        """fisher (nb, B, B), holding Σ g gᵀ / m, ← (fisher + λI)⁻¹ in place; scale: see ``block_scale``."""
        raise NotImplementedError


class AbsoluteDamp(Damping):
    """A fixed λ > 0 (the paper's damp)."""

    def __init__(self, value: float):
        ops.checks.check_damp(value)
        self.value = float(value)

    @property
    def spec(self) -> float:
        return self.value

    def describe(self) -> str:
        return f"λ={self.value:g}"

    def initial_finv(self, num_blocks, block_size, device):
        return ops.init_finv(num_blocks, block_size, self.value, device=device)

    def start_woodbury(self, finv, first_chunk, layout):
        if ops.packed.is_packed(finv):
            finv.copy_(ops.init_finv_packed(finv.shape[0], first_chunk.shape[2], self.value, dtype=finv.dtype, device=finv.device))
        else:
            finv.zero_().diagonal(dim1=1, dim2=2).fill_(1.0 / self.value)

    def invert(self, fisher, layout, *, backend="auto", scale=None, original=None):
        """As ``Damping.invert``; original: None, or a tensor holding what ``fisher`` holds now
        (a caller's copy), from which a slice whose Cholesky fails starts over (``invert_blocks``).
        Without it each slice is copied first: at d = 10⁶, B = 50, the five fresh 41 MB copies took
        ~0.1 s of fisher_inverse's 0.35-0.55 s (cProfile, 2 threads, Xeon, 2026-12-01)."""
        for start in range(0, fisher.shape[0], INVERT_SLICE):
            part = fisher[start : start + INVERT_SLICE]
            # whatever a backend left behind, start over from the slice as it was
            backup = part.clone() if original is None else original[start : start + part.shape[0]]
            try:
                ops.fisher_invert(part, self.value, backend=backend)
            except FloatingPointError as exc:
                part.copy_(backup)
                # every backend checks finiteness before it writes; more damping cannot fix NaN/inf
                # (checking here too was a second pass over F: 14-40 ms a fisher_inverse at d = 10⁶, B = 50,
                # against its ~0.3 s; slices of 4096 blocks, 2 threads, Xeon, 2026-12-01)
                if isinstance(exc, ops.checks.NonFiniteFisherError):
                    raise
                warnings.warn(f"{exc}; inverting blocks {start}..{start + part.shape[0] - 1} with a relative damp "
                              f"{FALLBACK_FRACTION:g} × their mean Fisher diagonal instead (raise damp, or pass "
                              f"damp='auto')", RuntimeWarning, stacklevel=3)
                _invert_relative(part, layout[start : start + part.shape[0]], FALLBACK_FRACTION, "block", backend)


class RelativeDamp(Damping):
    """λ = fraction · mean Fisher diagonal over the live weights of each tensor (or block)."""

    def __init__(self, fraction: float, per: str = "tensor"):
        self.fraction, self.per = check_relative_damp(fraction), check_damp_per(per)

    @property
    def spec(self) -> str:
        return f"rel:{self.fraction:g}:{self.per}"

    def describe(self) -> str:
        return f"λ={self.fraction:g}×mean diag per {self.per}"

    def start_woodbury(self, finv, first_chunk, layout):
        diag = (first_chunk.float() ** 2).sum(dim=1) / first_chunk.shape[1]  # (nb, B): mean g² over the chunk
        lam = self.fraction * _mean_diag(diag, layout, self.per)
        inverse = (1.0 / lam)[:, None].expand(-1, first_chunk.shape[2]).to(finv.dtype)
        if ops.packed.is_packed(finv):
            finv.zero_()[:, ops.packed.diagonal_index(first_chunk.shape[2], finv.device)] = inverse
        else:
            finv.zero_().diagonal(dim1=1, dim2=2).copy_(inverse)

    def block_scale(self, fisher, layout):
        return _mean_diag(ops.packed.block_diagonals(fisher), layout, self.per)

    def invert(self, fisher, layout, *, backend="auto", scale=None):
        scale = self.block_scale(fisher, layout) if scale is None else scale
        for start in range(0, fisher.shape[0], INVERT_SLICE):
            stop = start + INVERT_SLICE
            _invert_scaled(fisher[start:stop], scale[start:stop], self.fraction, backend)


class AutoDamp(RelativeDamp):
    """A relative damp whose fraction is chosen on the held-out last chunk (see the module doc).

    criterion: "full" (default) / "block": the predicted loss increase of the prune step
    itself under the held-out gradients (``damping_cv``); "likelihood": their Gaussian
    log-likelihood (the policy before issue 12, kept for comparison). Without a prune step
    to score (``fit`` called with no ``step``), "likelihood" is used.
    scores: candidate -> its criterion value (lower is better for the prune-step criteria;
    the log-likelihood is stored negated, so lower is better throughout).
    """

    needs_direct = True

    def __init__(self, per: str = "tensor", candidates=AUTO_CANDIDATES, max_blocks: int = 4096, seed: int = 0,
                 criterion: str = "full", rule: str = "1se"):
        cands = sorted(float(c) for c in candidates)
        if not cands or cands[0] <= 0:
            raise ValueError(f"candidates must be positive fractions, got {candidates!r}")
        if criterion not in AUTO_CRITERIA:
            raise ValueError(f"criterion must be one of {AUTO_CRITERIA}, got {criterion!r}")
        super().__init__(cands[len(cands) // 2], per)
        if rule not in AUTO_RULES:
            raise ValueError(f"rule must be one of {AUTO_RULES}, got {rule!r}")
        self.candidates, self.max_blocks, self.seed, self.criterion = tuple(cands), int(max_blocks), seed, criterion
        self.rule = rule
        self.chosen: float | None = None
        self.scores: dict[float, float] = {}
        self.score_terms: torch.Tensor | None = None  # (candidates, k): the criterion per held-out gradient

    @property
    def log_likelihood(self) -> dict[float, float]:
        """Candidate -> held-out log-likelihood (criterion "likelihood" only; else empty)."""
        return {a: -v for a, v in self.scores.items()} if self.criterion == "likelihood" else {}

    @property
    def spec(self) -> str:
        tail = "" if (self.criterion, self.rule) == ("full", "1se") else f":{self.criterion}"
        return f"auto:{self.per}{tail}" + ("" if self.rule == "1se" else f":{self.rule}")

    def describe(self) -> str:
        if self.chosen is None:
            return f"auto (per {self.per}; not chosen yet)"
        return f"auto: λ={self.chosen:.3g}×mean diag per {self.per}"

    def chunk_size_for(self, num_grads, chunk_size):
        """The held-out set is the last chunk: cap k at m/4 so F_rest keeps at least 3/4 of the gradients."""
        if num_grads < 2:
            raise ValueError("damp='auto' holds out some gradients to choose λ: needs num_grads >= 2")
        return min(chunk_size, max(1, num_grads // 4))

    def fit(self, fisher, heldout, num_grads, layout, step=None):
        h = heldout.shape[1]
        if h < 1 or num_grads - h < 1:
            raise ValueError(f"damp='auto' holds out the last chunk ({h} gradients) and builds F from the rest "
                             f"({num_grads - h}): needs num_grads > chunk_size")
        scale = _mean_diag(ops.packed.block_diagonals(fisher), layout, self.per)
        idx = _sample_blocks(layout, self.max_blocks, self.seed)
        if self.criterion == "likelihood" or step is None:
            totals, terms = _likelihood_totals(fisher, heldout, num_grads, layout, scale, idx, self.candidates), None
        else:
            totals, terms = _prune_step_totals(fisher, heldout, num_grads, layout, scale, idx, self.candidates,
                                               step().sample(idx), self.criterion)
        self.scores, self.score_terms = totals, terms
        best = _pick(totals, terms, self.rule)
        # best is right for F_rest's m − h gradients; the inverted F has m, and the right ridge
        # shrinks about as 1/(number of samples): scale it to m (first-order correction).
        self.chosen = best * (num_grads - h) / num_grads
        self.fraction = self.chosen

    def invert(self, fisher, layout, *, backend="auto", scale=None):
        if self.chosen is None:  # fisher_inverse() before prune(): no held-out chunk seen yet
            warnings.warn(f"damp='auto' has not chosen yet; using {self.fraction:g}×mean diag", RuntimeWarning, stacklevel=3)
        super().invert(fisher, layout, backend=backend, scale=scale)


def _pick(values: dict[float, float], terms: torch.Tensor | None, rule: str) -> float:
    """The chosen candidate: the least value (exact ties: the larger α), or with rule "1se" the
    largest α whose excess over the least is within one standard error of that excess, paired
    over the held-out gradients (terms: (candidates, k), one row per candidate in order)."""
    best = min(values, key=lambda a: (values[a], -a))
    if rule == "min" or terms is None or terms.shape[1] < 2:
        return best
    cands = list(values)
    diff = terms - terms[cands.index(best)]
    excess, se = diff.mean(1), diff.std(1) / math.sqrt(terms.shape[1])
    ceiling = 10.0 * best * (1 + 1e-9) if rule == "1se1d" else math.inf  # "1se1d": at most a decade above the least
    return max(a for i, a in enumerate(cands) if best <= a <= ceiling and bool(excess[i] <= se[i]))


def _rest_of(fisher, heldout, num_grads, sel):
    """F_rest of blocks ``sel`` in float64 (the Fisher without the held-out chunk) and that chunk."""
    g = heldout[sel].double()  # (s, h, B)
    h = g.shape[1]
    f = fisher[sel]
    # one float64 copy at a time, the rest in place: this runs inside the inversion phase, whose
    # peak core.memory estimates (test_memory's auto cases)
    rest = (ops.unpack_upper(f) if ops.packed.is_packed(f) else f).double() * num_grads
    del f
    rest -= g.transpose(1, 2) @ g
    return rest.div_(num_grads - h), g


def _reduced(totals: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """Sharded: every rank scores its own blocks; all must choose alike."""
    return layout.reduce(totals) if layout.reduce is not None else totals


def _likelihood_totals(fisher, heldout, num_grads, layout, scale, idx, candidates) -> dict[float, float]:
    """Candidate -> −(held-out Gaussian log-likelihood), summed over the sampled blocks."""
    totals = torch.zeros(len(candidates), dtype=torch.float64, device=layout.live.device)
    for start in range(0, idx.numel(), FIT_SLICE):
        sel = idx[start : start + FIT_SLICE]
        f_rest, g = _rest_of(fisher, heldout, num_grads, sel)
        d = scale[sel].double()
        c, gn = f_rest / d[:, None, None], g / d.sqrt()[:, None, None]
        n_dead = (~layout.live[sel]).sum().item()
        for i, a in enumerate(candidates):
            totals[i] -= _gaussian_log_likelihood(c, gn, a, n_dead)
    return dict(zip(candidates, _reduced(totals, layout).tolist()))


def _prune_step_totals(fisher, heldout, num_grads, layout, scale, idx, candidates, step, criterion):
    """Candidate -> the prune step's predicted loss increase under the held-out gradients
    (damping_cv), and its terms: (candidates, k) float64, ½(g_jᵀΔw)² per held-out gradient j."""
    from .damping_cv import predicted_increase

    f_rest, g = _rest_of(fisher, heldout, num_grads, idx)
    k = g.shape[1]
    # per candidate: k sums over blocks of g_jᵀΔw_b, k sums of (g_jᵀΔw_b)², failed (F_rest + λI not PD)
    stats = torch.zeros(len(candidates), 2 * k + 1, dtype=torch.float64, device=layout.live.device)
    for i, a in enumerate(candidates):
        per_grad, per_grad_blocks, failed = predicted_increase(step, f_rest, g, scale[idx].double(), layout.live[idx],
                                                               layout.tensor_index[idx], a, FIT_SLICE)
        stats[i, :k], stats[i, k : 2 * k], stats[i, -1] = per_grad, per_grad_blocks, float(failed)
    stats = _reduced(stats, layout)
    terms = (stats[:, :k] ** 2 if criterion == "full" else stats[:, k : 2 * k]) / 2  # ½ (g_jᵀΔw)² per gradient j
    value = torch.where(stats[:, -1] > 0, torch.full((len(candidates),), math.inf, dtype=torch.float64), terms.mean(1))
    terms[stats[:, -1] > 0] = math.inf
    return dict(zip(candidates, value.tolist())), terms


def parse_damp(damp, global_sparsity: bool = False) -> Damping:
    """FisherPruner's ``damp=``: a number (absolute λ), "rel:α[:per]", "auto[:per[:criterion[:rule]]]",
    or a Damping (text and numbers checked by ``specs.parse_damp_spec``, the rules the command
    line uses).

    per: "tensor" | "block" | "global". Left out, it follows the selection: "global" when one
    threshold ranks every tensor (``global_sparsity``: scores that compete must be on one
    scale), "tensor" otherwise. A Damping object is used as it is.
    """
    if isinstance(damp, Damping):
        return damp
    spec = parse_damp_spec(damp)
    per = spec.per or ("global" if global_sparsity else "tensor")
    if spec.kind == "auto":
        return AutoDamp(per=per, criterion=spec.criterion, rule=spec.rule)
    if spec.kind == "relative":
        return RelativeDamp(spec.value, per=per)
    return AbsoluteDamp(spec.value)


# ---- helpers ----------------------------------------------------------------------
def _mean_diag(diag: torch.Tensor, layout: BlockLayout, per: str) -> torch.Tensor:
    """(nb,) mean of ``diag`` (nb, B) over live coordinates, per block or per tensor, with fallbacks.

    A block (or tensor) with no live weight or an all-zero diagonal borrows its tensor's
    mean, then the global mean, then 1.
    """
    # one float32 copy, summed in float64 (the per-block sums are the bits three float64 copies
    # gave): on MiniLM's shapes (331,776 blocks of 32, 70% live, 2 threads, 2026-12-08, medians
    # of 7, alternated) 0.11 s against 0.17 s for a dense F's strided diagonal, 0.08 against 0.12 packed
    diag = diag.detach().clamp_min(0).masked_fill_(~layout.live, 0)
    live = layout.live.sum(1, dtype=torch.float64)
    block_sum = diag.sum(1, dtype=torch.float64)
    t_sum = torch.zeros(layout.num_tensors, dtype=torch.float64, device=diag.device).index_add_(0, layout.tensor_index, block_sum)
    t_live = torch.zeros(layout.num_tensors, dtype=torch.float64, device=diag.device).index_add_(0, layout.tensor_index, live)
    if layout.reduce is not None:  # sharded: a tensor's blocks may sit on several ranks
        both = layout.reduce(torch.stack([t_sum, t_live]))
        t_sum, t_live = both[0], both[1]
    global_mean = (t_sum.sum() / t_live.sum()).item() if t_live.sum() > 0 else 0.0
    global_mean = global_mean if global_mean > 0 else 1.0
    t_mean = torch.where((t_live > 0) & (t_sum > 0), t_sum / t_live.clamp_min(1), torch.full_like(t_sum, global_mean))
    if per == "global":
        return torch.full((layout.tensor_index.numel(),), global_mean, dtype=torch.float32, device=diag.device)
    per_block_of_tensor = t_mean[layout.tensor_index]
    if per == "tensor":
        return per_block_of_tensor.float()
    b_mean = torch.where((live > 0) & (block_sum > 0), block_sum / live.clamp_min(1), per_block_of_tensor)
    return b_mean.float()


def invert_blocks(damping: Damping, fisher: torch.Tensor, layout: BlockLayout, *, backend: str = "auto",
                  scale: torch.Tensor | None = None, original: torch.Tensor | None = None) -> None:
    """``damping.invert(fisher, ...)``, telling the absolute damp where a copy of ``fisher`` is
    (``original``, same shape, left unchanged), so that it need not copy each slice first. Other
    policies copy nothing; a policy that overrides ``invert`` gets the plain call."""
    if original is not None and type(damping).invert is AbsoluteDamp.invert:
        damping.invert(fisher, layout, backend=backend, scale=scale, original=original)
    else:
        damping.invert(fisher, layout, backend=backend, scale=scale)


def _invert_scaled(part: torch.Tensor, scale: torch.Tensor, fraction: float, backend: str) -> None:
    """part ← (part + fraction·scale·I)⁻¹ via the normalised blocks part/scale (in place); dense or packed."""
    s = scale.to(part.dtype).view(-1, *([1] * (part.dim() - 1)))
    part.div_(s)
    ops.fisher_invert(part, fraction, backend=backend)
    part.div_(s)


def _invert_relative(part: torch.Tensor, layout: BlockLayout, fraction: float, per: str, backend: str) -> None:
    _invert_scaled(part, _mean_diag(ops.packed.block_diagonals(part), layout, per), fraction, backend)


def _sample_blocks(layout: BlockLayout, max_blocks: int, seed: int) -> torch.Tensor:
    """Indices of up to max_blocks blocks with a live weight, a seeded sample, sorted."""
    candidates = torch.nonzero(layout.live.any(1)).flatten()
    if candidates.numel() > max_blocks:
        perm = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))[:max_blocks]
        candidates = candidates[perm.to(candidates.device)].sort().values
    return candidates


def _gaussian_log_likelihood(c: torch.Tensor, g: torch.Tensor, fraction: float, n_dead: int) -> float:
    """Σ over blocks and samples of log N(g; 0, c + αI), up to a constant; dead coordinates removed.

    c: (s, B, B) float64 normalised Fisher; g: (s, h, B) normalised held-out gradients,
    zero at dead coordinates (which contribute exactly −½·log α per sample and are dropped).
    A candidate whose Cholesky fails scores −inf.
    """
    a = c.clone()
    a.diagonal(dim1=1, dim2=2).add_(fraction)
    chol, info = torch.linalg.cholesky_ex(a)
    if bool(info.any()):
        return -math.inf
    h = g.shape[1]
    logdet = 2.0 * torch.log(chol.diagonal(dim1=1, dim2=2)).sum().item() - n_dead * math.log(fraction)
    z = torch.linalg.solve_triangular(chol, g.transpose(1, 2), upper=False)  # (s, B, h)
    return -0.5 * ((z ** 2).sum().item() + h * logdet)
