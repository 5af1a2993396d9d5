"""Experiment (issue 12): `auto` scored over every chunk as the held-out set in turn (K-fold), not
over the last chunk alone. Run from the repository root with a script and its arguments, e.g.
  python bench/results/kfold-auto-2026-12-08.py examples/damping_table.py --policies auto:global:full:1se \
      auto:global:full:1se1d --seeds 0 1 2 --out OUT.json
  python bench/results/kfold-auto-2026-12-08.py examples/minilm_prune_table.py --sparsities 0.8 \
      --methods joint --recompute-at --no-sweep --damp auto:global:full:1se1d --out OUT

Within this experiment the rule name "1se1d" means "1se over K folds" (the pruner's own "1se1d",
a decade cap, is not used here); "1se" and "min" stay the pruner's. Each flush records the chunk's
rows at AutoDamp's seeded sample of blocks (the same sample the fit draws); the fit then scores
every recorded chunk against F_rest = F without that chunk, pools the m per-gradient terms
(candidates, m) and applies the one-standard-error rule to them. Prints each fit's α and, per
candidate, the pooled increase and its standard error against the least, to stderr.
"""
import json
import math
import os
import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
from obert_kernels import ops  # noqa: E402
from obert_kernels.core import damping as D  # noqa: E402
from obert_kernels.core.damping_cv import predicted_increase  # noqa: E402
from obert_kernels.core.fisher_state import FisherBuild  # noqa: E402

MODE = os.environ.get("MODE", "kfold")  # "kfold" or "scaled"
CHUNKS: list[torch.Tensor] = []  # this step's chunks at the sampled blocks, (s, h, B) float32 each
_init, _flush, _fit = FisherBuild.__init__, FisherBuild.flush, D.AutoDamp.fit


def init(self, *a, **kw):
    CHUNKS.clear()
    _init(self, *a, **kw)


def flush(self, layout):
    damping = self.config.damping
    if MODE == "kfold" and self.grads.filled and isinstance(damping, D.AutoDamp) and damping.rule == "1se1d":
        idx = D._sample_blocks(layout(), damping.max_blocks, damping.seed)
        CHUNKS.append(self.grads.chunk()[idx].clone())
    _flush(self, layout)


def fold_terms(f_sum, g, num_grads, scale, layout, idx, step, candidates):
    """(candidates, h) ½(g_jᵀΔw)² for held-out chunk g (s, h, B) float64, F_rest = (f_sum − gᵀg)/(m − h)."""
    h = g.shape[1]
    rest = (f_sum - g.transpose(1, 2) @ g) / (num_grads - h)
    terms = torch.empty(len(candidates), h, dtype=torch.float64)
    for i, a in enumerate(candidates):
        per_grad, _, failed = predicted_increase(step, rest, g, scale, layout.live[idx], layout.tensor_index[idx], a,
                                                 D.FIT_SLICE)
        terms[i] = math.inf if failed else per_grad ** 2 / 2
    return terms


def scaled_fit(self, fisher, heldout, num_grads, layout, step):
    """One held-out chunk (the pruner's), the sample's cross-block terms scaled by N/s (an unbiased
    estimate of the whole network's ½(g_jᵀΔw)², N candidate blocks, s sampled)."""
    idx = D._sample_blocks(layout, self.max_blocks, self.seed)
    n_all, s = int(layout.live.any(1).sum()), idx.numel()
    scale = D._mean_diag(ops.packed.block_diagonals(fisher), layout, self.per)
    f_rest, g = D._rest_of(fisher, heldout, num_grads, idx)
    sampled = step().sample(idx)
    terms = torch.empty(len(self.candidates), g.shape[1], dtype=torch.float64)
    for i, a in enumerate(self.candidates):
        per_grad, per_blocks, failed = predicted_increase(sampled, f_rest, g, scale[idx].double(), layout.live[idx],
                                                          layout.tensor_index[idx], a, D.FIT_SLICE)
        cross = per_grad ** 2 - per_blocks
        terms[i] = math.inf if failed else (per_blocks + (n_all / s) * cross) / 2
    return terms, f"scaled cross terms, N/s = {n_all}/{s}"


def fit(self, fisher, heldout, num_grads, layout, step=None):
    if self.rule == "1se1d" and MODE == "scaled":
        terms, what = scaled_fit(self, fisher, heldout, num_grads, layout, step)
        report(self, terms, heldout.shape[1], num_grads, what)
        return
    if self.rule != "1se1d":
        _fit(self, fisher, heldout, num_grads, layout, step)
        dump(self, f"pruner's {self.rule}")
        return
    idx = D._sample_blocks(layout, self.max_blocks, self.seed)
    assert torch.equal(CHUNKS[-1], heldout[idx]), "the last recorded chunk is the pruner's held-out chunk"
    assert sum(c.shape[1] for c in CHUNKS) == num_grads, (len(CHUNKS), num_grads)
    scale = D._mean_diag(ops.packed.block_diagonals(fisher), layout, self.per)[idx].double()
    f = fisher[idx]
    f_sum = (ops.unpack_upper(f) if ops.packed.is_packed(f) else f).double() * num_grads
    sampled = step().sample(idx)
    terms = torch.cat([fold_terms(f_sum, c.double(), num_grads, scale, layout, idx, sampled, self.candidates)
                       for c in CHUNKS], dim=1)
    report(self, terms, heldout.shape[1], num_grads, f"K-fold, {len(CHUNKS)} folds")


def report(self, terms, k, num_grads, what):
    values = dict(zip(self.candidates, terms.mean(1).tolist()))
    best = D._pick(values, terms, "1se")
    self.scores, self.score_terms = values, terms
    self.chosen = self.fraction = best * (num_grads - k) / num_grads
    dump(self, what)


def dump(self, what):
    """Print the fit's curve (candidate: mean ± paired SE against the least) to stderr, and append
    the candidates, the per-gradient terms and the choice to $TERMS (a .jsonl) when set."""
    values, terms = self.scores, self.score_terms
    least = min(values, key=values.get)
    diff = terms - terms[list(values).index(least)]
    se = (diff.std(1) / math.sqrt(terms.shape[1])).tolist()
    curve = ", ".join(f"{a:.3g}: {v:.4g}±{s:.2g}" for (a, v), s in zip(values.items(), se))
    print(f"  auto ({what}): α = {self.chosen:.3g} (least at {least:.3g}); {curve}", file=sys.stderr, flush=True)
    if os.environ.get("TERMS"):
        with open(os.environ["TERMS"], "a") as f:
            f.write(json.dumps({"what": what, "chosen": self.chosen, "candidates": list(values),
                                "terms": terms.tolist()}) + "\n")


FisherBuild.__init__, FisherBuild.flush, D.AutoDamp.fit = init, flush, fit
script = str((ROOT / sys.argv[1]).resolve()) if not Path(sys.argv[1]).is_absolute() else sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
