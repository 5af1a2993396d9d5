"""CPU time of AutoDamp.fit at all-MiniLM-L6-v2's size (331,776 Fisher blocks of 32, k = 32), synthetic blocks.

Times the prune-step criterion (the default) and the held-out likelihood (the auto before
issue 12) on the same F and held-out chunk; process CPU time, so a loaded machine's wall
time does not inflate it (about 2.8 GB of memory for F and the chunk).

    OMP_NUM_THREADS=1 python examples/damping_fit_cost.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from obert_kernels.core.damping import AutoDamp, block_layout  # noqa: E402
from obert_kernels.core.damping_cv import PruneStep  # noqa: E402
from obert_kernels.ops.patterns import parse_pattern  # noqa: E402


def main(num_blocks: int = 331776, B: int = 32, k: int = 32, m: int = 256) -> None:
    torch.manual_seed(0)
    fisher = torch.empty(num_blocks, B, B)
    for s in range(0, num_blocks, 16384):
        g = torch.randn(min(16384, num_blocks - s), 8, B)
        fisher[s : s + 16384] = g.transpose(1, 2) @ g / 8
    heldout = torch.randn(num_blocks, k, B)
    fisher += heldout.transpose(1, 2) @ heldout / m
    layout = block_layout([num_blocks], [torch.zeros(num_blocks * B, dtype=torch.bool)], B, "cpu")
    weights = torch.randn(num_blocks, B)

    def step():
        return PruneStep(0.7, weights, torch.ones(num_blocks, B, dtype=torch.bool), parse_pattern("unstructured"), "obs", True)

    for criterion in ("full", "likelihood"):
        damping = AutoDamp(per="global", criterion=criterion)
        wall, cpu = time.perf_counter(), time.process_time()
        damping.fit(fisher, heldout, m, layout, step)
        print(f"AutoDamp(criterion={criterion!r}).fit, {num_blocks} blocks of {B}, k={k}: CPU {time.process_time() - cpu:.1f} s, "
              f"wall {time.perf_counter() - wall:.1f} s, {torch.get_num_threads()} thread(s), chose {damping.chosen:.3g}")


if __name__ == "__main__":
    main()
