"""Issue 15: what the first add_grads of a MiniLM-shaped FisherPruner spends (random tensors; --prof for cProfile; see cpu-first-touch-reporting-2026-12-07.txt)."""
import time, torch, sys
from obert_kernels import FisherPruner
shapes = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
params = {f"l{l}.{i}": torch.randn(*s) for l in range(6) for i, s in enumerate(shapes)}
grads = {n: torch.randn_like(p) for n, p in params.items()}
t = time.perf_counter(); pr = FisherPruner(params, block_size=32, num_grads=1024, damp=1e-6, verbose=False); t_init = time.perf_counter() - t
import cProfile, pstats
prof = cProfile.Profile() if "--prof" in sys.argv else None
t = time.perf_counter()
if prof: prof.enable()
pr.add_grads(grads)
if prof: prof.disable()
t_first = time.perf_counter() - t
t = time.perf_counter(); pr.add_grads(grads); t_second = time.perf_counter() - t
print(f"init {t_init:.3f} s, first add_grads {t_first:.3f} s, second {t_second*1e3:.1f} ms")
if prof: pstats.Stats(prof).sort_stats("cumulative").print_stats(18)
