"""d = 10⁶ (1000×1000), B = 50, 256 random gradients, damp 1e-6, prune(0.5): dense against packed F
(fisher_storage explicit), 4 rounds, the order alternating; seconds of the 256 add_grads and of prune().
Run from the repository root: python bench/results/packed-d1m-cpu-2026-12-08.py"""
import time, torch, statistics, warnings
warnings.simplefilter("ignore")
from obert_kernels import FisherPruner
torch.manual_seed(0)
w0 = torch.randn(1000, 1000); pool = torch.randn(256, 1000, 1000)
res = {}
for r in range(4):
    for st in (["dense", "packed"] if r % 2 == 0 else ["packed", "dense"]):
        w = w0.clone()
        p = FisherPruner({"w": w}, block_size=50, num_grads=256, damp=1e-6, fisher_storage=st, verbose=False)
        t = time.perf_counter()
        for i in range(256): p.add_grads({"w": pool[i]})
        c = time.perf_counter() - t
        t = time.perf_counter(); p.prune(0.5); q = time.perf_counter() - t
        res.setdefault(st, []).append((round(c, 3), round(q, 3)))
        res.setdefault(st + "_w", w)
for st in ("dense", "packed"):
    print(st, "collect median", statistics.median(x[0] for x in res[st]), "prune median", statistics.median(x[1] for x in res[st]), res[st])
print("same weights", torch.equal(res["dense_w"], res["packed_w"]))
