"""Experiment (issue 12): how far `auto`'s candidate updates move the weights they keep. For each
candidate α the fit's update on its sampled blocks is recorded: ρ = ‖Δw on the kept weights‖ /
‖w on the kept weights‖, and the removed fraction ‖w pruned‖ / ‖w‖, stored on the AutoDamp as
``update_rho`` / ``removed`` (candidate order) and, with $TERMS set, appended to that .jsonl with
the fit's terms. Run a script through it, e.g.
  python bench/results/auto-update-size-2026-12-08.py bench/results/auto-rules-digits-2026-12-08.py --seeds 0 --out OUT.json
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
from obert_kernels.core import damping as D, damping_cv as CV  # noqa: E402

CURRENT: list[dict] = []  # one accumulator per candidate of the fit in progress


class RecordingOps:
    """damping_cv's ``ops``: obs_update records the update's sizes, everything else is ops'."""

    def __getattr__(self, name):
        return getattr(ops, name)

    @staticmethod
    def obs_update(w, finv, mask, pattern, mode, backend):
        before = w.clone()
        new = ops.obs_update(w, finv, mask, pattern, mode, backend=backend)
        kept = ~mask & (before != 0)
        acc = CURRENT[-1]
        acc["dw2"] += float(((new - before)[kept].double() ** 2).sum())
        acc["w2"] += float((before[kept].double() ** 2).sum())
        acc["pruned2"] += float((before[mask].double() ** 2).sum())
        return new


_increase, _fit = CV.predicted_increase, D.AutoDamp.fit


def predicted_increase(*a, **kw):
    CURRENT.append({"dw2": 0.0, "w2": 0.0, "pruned2": 0.0})
    return _increase(*a, **kw)


def fit(self, *a, **kw):
    CURRENT.clear()
    _fit(self, *a, **kw)
    if not CURRENT:  # the likelihood criterion: no updates scored
        return
    self.update_rho = [math.sqrt(c["dw2"] / c["w2"]) if c["w2"] > 0 else math.nan for c in CURRENT]
    # a candidate whose Cholesky failed runs no update: nan
    self.removed = [math.sqrt(c["pruned2"] / (c["pruned2"] + c["w2"])) if c["w2"] > 0 else math.nan for c in CURRENT]
    print("  auto update sizes ρ: " + ", ".join(f"{a:.3g}: {r:.3g}" for a, r in zip(self.candidates, self.update_rho))
          + f" (chose {self.chosen:.3g})", file=sys.stderr, flush=True)
    if os.environ.get("TERMS"):
        with open(os.environ["TERMS"], "a") as f:
            f.write(json.dumps({"chosen": self.chosen, "candidates": list(self.candidates), "rho": self.update_rho,
                                "removed": self.removed,
                                "terms": [[float(f"{x:.6g}") for x in row] for row in self.score_terms.tolist()]}) + "\n")


CV.ops, CV.predicted_increase, D.AutoDamp.fit = RecordingOps(), predicted_increase, fit
script = str((ROOT / sys.argv[1]).resolve()) if not Path(sys.argv[1]).is_absolute() else sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
