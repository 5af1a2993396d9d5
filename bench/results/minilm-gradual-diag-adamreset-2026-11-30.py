"""Experiment (not committed as library code): at every pruning step, drop the AdamW state of
every tracked weight (fresh moments and step count), not only the newly pruned ones' moments."""
import sys, runpy
sys.path.insert(0, "/work/main")
import torch
from obert_kernels.recipes import gradual_training as gt

orig = gt.MaskKeeper.zero_optimizer_state

@torch.no_grad()
def reset_all(self, optimizer):
    for n, t in self.params:
        if n in self.masks:
            optimizer.state.pop(t, None)

gt.MaskKeeper.zero_optimizer_state = reset_all
sys.argv = ["examples/minilm_gradual_table.py"] + sys.argv[1:]
runpy.run_path("/work/main/examples/minilm_gradual_table.py", run_name="__main__")
