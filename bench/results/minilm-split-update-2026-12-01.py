"""Experiment (issue 12): select with the global auto λ, update with a per-tensor λ at the same α."""
# run from the repository root: SPLIT=tensor|off OMP_NUM_THREADS=1 python bench/results/minilm-split-update-2026-12-01.py --methods obs joint --sparsities 0.7 0.8 --recompute-at 0.7 0.8 --recompute-methods obs --no-sweep --baseline-json bench/results/minilm-cpu-2026-11-21.json --out OUT
import os, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
import torch
from obert_kernels.core import pruner as P
from obert_kernels.core.damping import RelativeDamp

MODE = os.environ.get("SPLIT", "tensor")  # "tensor": same α per tensor; "off": today's

def split_step(self, target):
    g = vars(P)
    start = time.perf_counter()
    state, tracked = self._state, self._tracked
    state.flush(self._layout)
    state.fisher.symmetrize()
    F = state.fisher.blocks.clone()
    step = lambda: g["prune_step"](tracked.pieces, tracked.float32_weights(), target, self.config,
                                   self.local_num_blocks, self.device, self._shard)
    layout = self._layout()
    finv = state.finalize(self._layout, step)
    weights = tracked.float32_weights()
    new, factors = g["select_new"](target, weights, finv, tracked, self._masks.pruned, self.config, self._shard)
    alpha = self.damping.chosen if hasattr(self.damping, "chosen") else self.damping.fraction
    RelativeDamp(alpha, per="tensor").invert(F, layout, backend=self.backend)
    del finv
    updated = g["updated_weights"](tracked.pieces, tracked.slots, weights, F, new, self._masks.pruned,
                                   [None] * len(tracked.pieces), self.config, self._shard)
    report = g["PruneReport"](target, self.pattern.name, self.update, self.global_sparsity, self.backend, 0.0,
                              damping=self.damping.describe() + f" | update per tensor α={alpha:.3g}")
    g["write_back"](tracked.slots, self._masks, new, updated, report)
    report.seconds = time.perf_counter() - start
    self._state = None
    self.history.append(report)
    return report

if MODE == "tensor":
    P.FisherPruner._prune_step = split_step
import minilm_prune_table
minilm_prune_table.main(sys.argv[1:])
