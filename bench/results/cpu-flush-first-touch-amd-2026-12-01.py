"""Where MiniLM's add_grads time goes on the AMD EPYC guest (issue 15), 2026-12-01.

1. The flush (cpp fisher_accumulate, upper triangles, in place) at MiniLM's shape
   (331,776 blocks of B = 32): AVX2 against AVX-512 tiles, dense against packed F, and
   k = 16/32/64 gradients a chunk (ms per gradient). Medians of the rounds after the first.
2. First touch of a 1.36 GB tensor (MiniLM's F at B = 32, or its buffer at k = 32), each in a
   fresh process: torch.zeros; torch.empty + madvise(MADV_HUGEPAGE) + zero_; torch.empty +
   madvise(MADV_POPULATE_WRITE); then a second pass (add_) over the same memory.

    PYTHONPATH=. python bench/results/cpu-flush-first-touch-amd-2026-12-01.py
"""
import ctypes
import statistics
import subprocess
import sys
import time

import torch

NB, B = 331776, 32


def flush_ms(F, buf, isa=None):
    from obert_kernels import ops
    from obert_kernels.ops.backends import cpp
    if isa:
        cpp.use_isa(isa)
    start = time.perf_counter()
    ops.fisher_accumulate(F, buf, 1024, backend="cpp", check_finite=False, upper_only=True)
    elapsed = time.perf_counter() - start
    cpp.use_isa("auto")
    return 1e3 * elapsed


def flushes():
    from obert_kernels import ops
    torch.manual_seed(0)
    dense, packed = torch.zeros(NB, B, B), torch.zeros(NB, ops.packed.packed_size(B))
    bufs = {k: torch.randn(NB, k, B) for k in (16, 32, 64)}
    cases = {"avx2, dense, k=32": (dense, bufs[32], "avx2"), "avx512, dense, k=32": (dense, bufs[32], "avx512"),
             "auto, packed, k=32": (packed, bufs[32], None), "auto, dense, k=16": (dense, bufs[16], None),
             "auto, dense, k=64": (dense, bufs[64], None)}
    times = {name: [] for name in cases}
    for _ in range(7):
        for name, (F, buf, isa) in cases.items():
            times[name].append(flush_ms(F, buf, isa))
    for name, t in times.items():
        k = cases[name][1].shape[1]
        med = statistics.median(t[1:])
        print(f"flush {name}: median {med:.1f} ms a chunk, {med / k:.2f} ms a gradient; all {[round(x) for x in t]}")


def first_touch(mode):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def advise(t, flag, align):
        p, n = t.data_ptr(), t.numel() * t.element_size()
        a, e = (p + align - 1) // align * align, (p + n) // align * align
        assert libc.madvise(a, e - a, flag) == 0, ctypes.get_errno()

    n = 10616832 * 32
    start = time.perf_counter()
    if mode == "zeros":
        x = torch.zeros(n)
    elif mode == "hugepage":
        x = torch.empty(n)
        advise(x, 14, 2 << 20)  # MADV_HUGEPAGE
        x.zero_()
    else:
        x = torch.empty(n)
        advise(x, 23, 4096)  # MADV_POPULATE_WRITE
    first = time.perf_counter() - start
    start = time.perf_counter()
    x.add_(1.0)
    print(f"first touch {mode}: {first:.3f} s, second pass {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        first_touch(sys.argv[1])
        sys.exit()
    print(open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(":\t "), "|",
          f"torch {torch.__version__}, {torch.get_num_threads()} threads |",
          open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip())
    flushes()
    for _ in range(3):
        for mode in ("zeros", "hugepage", "populate"):
            subprocess.run([sys.executable, __file__, mode], check=True)
