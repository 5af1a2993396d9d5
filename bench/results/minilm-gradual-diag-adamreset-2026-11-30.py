"""Usage: python bench/results/minilm-gradual-diag-adamreset-2026-11-30.py --sparsities 0.9 \
    --methods 'gradual oBERT + distill' --no-dense --out DIR   (any minilm_gradual_table.py arguments)

Experiment (not committed as library code): at every pruning step, drop the AdamW state of
every tracked weight (fresh moments and step count), not only the newly pruned ones' moments."""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import torch
from obert_kernels.recipes import gradual_training as gt

@torch.no_grad()
def reset_all(self, optimizer):
    for n, t in self.params:
        if n in self.masks:
            optimizer.state.pop(t, None)

gt.MaskKeeper.zero_optimizer_state = reset_all
sys.argv = ["examples/minilm_gradual_table.py"] + sys.argv[1:]
runpy.run_path(str(ROOT / "examples" / "minilm_gradual_table.py"), run_name="__main__")
