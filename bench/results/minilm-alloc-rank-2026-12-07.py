"""Experiment (issue 12): is the per-tensor λ's gain on MiniLM in *how many* weights each tensor
loses (the allocation across tensors) or in *which* weights it loses inside a tensor (the ranking)?

HYB=alloc: each tensor's count from the global-λ selection (the scale that stops the digits
           collapse), the weights inside each tensor ranked, and updated, with the per-tensor λ
           at the same α (a second inversion of a copy of F);
HYB=rank:  the converse: counts from the per-tensor λ, ranking and update with the global λ;
HYB=off:   the pruner as it is.
Run from the repository root (the first argument names the example to run: minilm_prune_table,
the default, or damping_table for the digits networks), e.g.
  HYB=alloc python bench/results/minilm-alloc-rank-2026-12-07.py --methods obs --sparsities 0.8 \
      --recompute-at 0.8 --recompute-methods obs --no-sweep --damp rel:2.77e-3:global \
      --baseline-json bench/results/minilm-cpu-2026-11-21.json --out OUT
"""
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
import torch  # noqa: E402

from obert_kernels.core import pruner as P  # noqa: E402
from obert_kernels.core import scoring, selection  # noqa: E402
from obert_kernels.core.damping import RelativeDamp  # noqa: E402

MODE = os.environ.get("HYB", "alloc")


def scores_by_tensor(tracked, weights, finv, pruned, config):
    flat, factors = scoring.local_scores(tracked.pieces, weights, finv, pruned, config, tracked.device)
    out, offset = {}, 0
    for slot in tracked.slots:
        size = math.prod(scoring.score_shape(slot, config))
        out[slot.name] = flat[offset: offset + size]
        offset += size
    return out, factors


def hybrid_step(self, target):
    start = time.perf_counter()
    state, tracked, pruned = self._state, self._tracked, self._masks.pruned
    state.flush(self._layout)
    state.fisher.symmetrize()
    F = state.fisher.blocks.clone()
    layout = self._layout()
    step = lambda: P.prune_step(tracked.pieces, tracked.float32_weights(), target, self.config,  # noqa: E731
                                self.local_num_blocks, self.device, self._shard)
    finv_global = state.finalize(self._layout, step)  # the configured (global) damp, auto included
    alpha = self.damping.chosen if hasattr(self.damping, "chosen") else self.damping.fraction
    RelativeDamp(alpha, per="tensor").invert(F, layout, backend=self.backend)
    weights = tracked.float32_weights()
    counting, ranking = (finv_global, F) if MODE == "alloc" else (F, finv_global)
    counted, _ = scores_by_tensor(tracked, weights, counting, pruned, self.config)
    chosen = selection.select_global(counted, target)
    counts = {n: int(c.sum()) for n, c in chosen.items()}
    del counted, chosen
    ranked, factors = scores_by_tensor(tracked, weights, ranking, pruned, self.config)
    new = {n: selection.select_lowest(ranked[n], counts[n]) & ~pruned[n] for n in ranked}
    updated = P.updated_weights(tracked.pieces, tracked.slots, weights, ranking, new, pruned, factors,
                                self.config, self._shard)
    report = P.PruneReport(target, self.pattern.name, self.update, self.global_sparsity, self.backend, 0.0,
                           damping=self.damping.describe() + f" | {MODE}: per-tensor α={alpha:.3g}")
    P.write_back(tracked.slots, self._masks, new, updated, report)
    report.seconds = time.perf_counter() - start
    self._state = None
    self.history.append(report)
    print("  per-tensor sparsity:", " ".join(f"{t.sparsity:.2f}" for t in report.tensors.values()), file=sys.stderr)
    return report


def report_sparsity(self, target, _orig=P.FisherPruner._prune_step):
    report = _orig(self, target)
    print("  per-tensor sparsity:", " ".join(f"{t.sparsity:.2f}" for t in report.tensors.values()), file=sys.stderr)
    return report


P.FisherPruner._prune_step = hybrid_step if MODE in ("alloc", "rank") else report_sparsity
if __name__ == "__main__":
    # the first argument may name the example whose main() runs with the patched step
    import importlib
    argv = sys.argv[1:]
    example = argv.pop(0) if argv and not argv[0].startswith("-") else "minilm_prune_table"
    importlib.import_module(example).main(argv)
