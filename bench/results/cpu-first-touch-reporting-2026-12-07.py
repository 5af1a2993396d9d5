"""First touch of a 1.36 GB float32 tensor (torch.zeros) on this guest: fresh, again at once after
freeing it, and again after waiting (the virtio balloon's free page reporting hands freed pages back
to the host after a delay)."""
import sys, time, torch
n = 1360 * 2**20 // 4
def touch():
    t0 = time.perf_counter(); x = torch.zeros(n); dt = time.perf_counter() - t0; del x; return dt
waits = [float(w) for w in sys.argv[1:]] or [0, 0, 5, 0, 10, 0, 30]
print(f"first {touch():.3f} s")
for w in waits:
    time.sleep(w); print(f"after {w:>4.0f} s idle: {touch():.3f} s", flush=True)
