"""Prune-step time, dense F⁻¹ against packed F⁻¹ unpacked in tiles of 1-64 MiB (ops/packed.py), on the CPU.

MiniLM's shapes (36 tensors: per layer 4 × 384×384, 1536×384, 384×1536; 10.6M weights) with random
weights and 64 scaled copies of one random gradient, B = 32, k = 32, prune(0.8) with the damp given
(argv[1], e.g. rel:0.01), argv[2] rounds, the order of the configurations reversed every other round;
prints the median prune() seconds of each. argv[3]: the tile sizes in MiB (default 1,2,4,8,16,64).
Run from the repository root:
    python bench/results/packed-tile-cpu-2026-12-08.py rel:0.01 3
    python bench/results/packed-tile-cpu-2026-12-08.py rel:0.01 6 8,64
"""
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import obert_kernels.ops.packed as PK  # noqa: E402
from obert_kernels import FisherPruner  # noqa: E402

warnings.simplefilter("ignore")
shapes = [s for _ in range(6) for s in [(384, 384)] * 4 + [(1536, 384), (384, 1536)]]
torch.manual_seed(0)
base = {f"w{i}": torch.randn(s) for i, s in enumerate(shapes)}
grad = {n: torch.randn_like(w) for n, w in base.items()}


def one(storage, tile):
    PK.UNPACK_TILE_BYTES = PK.CPU_UNPACK_TILE_BYTES = tile
    ws = {n: w.clone() for n, w in base.items()}
    p = FisherPruner(ws, block_size=32, num_grads=64, chunk_size=32, damp=sys.argv[1], fisher_storage=storage,
                     verbose=False)
    for i in range(64):
        p.add_grads({n: x * (1 + 0.01 * i) for n, x in grad.items()})
    start = time.perf_counter()
    p.prune(0.8)
    return time.perf_counter() - start


mibs = [int(t) for t in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1, 2, 4, 8, 16, 64]
configs = [("dense", 64 << 20)] + [("packed", t << 20) for t in mibs]
res = {}
for rep in range(int(sys.argv[2])):
    for storage, tile in (configs if rep % 2 == 0 else configs[::-1]):
        res.setdefault((storage, tile >> 20), []).append(round(one(storage, tile), 2))
for (storage, mib), v in res.items():
    print(f"{storage:6s} tile {mib:2d} MiB: median {statistics.median(v):.2f} s, runs {v}")
