"""Issue 15: two 1.36 GB torch.zeros held together, after 20 s idle, twice (see cpu-first-touch-reporting-2026-12-07.txt)."""
import time, torch
n = 1360 * 2**20 // 4
for rnd in range(2):
    time.sleep(20)
    out = []
    for i in range(2):
        t0 = time.perf_counter(); out.append(torch.zeros(n)); out[-1][::1024].sum()
        print(f"round {rnd} tensor {i}: {time.perf_counter() - t0:.3f} s", flush=True)
    del out
