"""Experiment (issue 12): `auto` that keeps the α it chose at the first of R prune steps for the later
steps (FIRST=1), against `auto` choosing at every step (FIRST=0, the pruner as it is). Prints each
step's α. Run from the repository root; the arguments are examples/minilm_prune_table.py's, e.g.
  FIRST=1 python bench/results/minilm-auto-first-alpha-2026-12-08.py --sparsities 0.7 --methods magnitude \
      --recompute-at 0.7 --recompute-methods obs --no-sweep --damp auto \
      --baseline-json bench/results/minilm-cpu-2026-11-21.json --out OUT
"""
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
from obert_kernels.core.damping import AutoDamp  # noqa: E402

FIRST = os.environ.get("FIRST", "1") == "1"
_fit = AutoDamp.fit


def fit(self, *args, **kwargs):
    if FIRST and self.chosen is not None:  # a later step: keep the first step's α
        print(f"  auto: keeping α = {self.chosen:.3g} from the first step", file=sys.stderr)
        return
    _fit(self, *args, **kwargs)
    print(f"  auto: chose α = {self.chosen:.3g}", file=sys.stderr)


AutoDamp.fit = fit
sys.argv = [str(ROOT / "examples" / "minilm_prune_table.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
