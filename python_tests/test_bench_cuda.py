"""bench/bench_cuda_gpu.py's CPU-side plumbing: counting, inputs, reference check, reports.

The benchmark itself needs a GPU; here it runs tiny, on the CPU, with the torch methods,
so a broken script is caught before anyone books GPU time for it.
"""
import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_cuda_gpu.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_cuda_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_counts_match_spec():
    b = load()
    assert b.woodbury_flops(85_000_000, 50, 1024) == 4 * 85_000_000 * 50 * 1024
    nb = 1_700_000
    assert b.finv_bytes(nb, 50, True) / b.finv_bytes(nb, 50, False) == 51 / 100
    naive = b.method_bytes("naive", nb, 50, 1024, 32)
    fused = b.method_bytes("cuda-dense", nb, 50, 1024, 32)
    assert naive > 30 * fused  # F⁻¹ once per gradient vs once per 32-gradient chunk


def test_sequence_cycles_the_pool():
    b = load()
    assert b.sequence(70, 32, 2) == [(0, 32), (1, 32), (0, 6)]


def test_reference_blocks_is_the_float64_oracle(seed):
    b = load()
    nb, B, k, m = 5, 6, 4, 10
    chunks = [b.make_chunk(i, k, nb, B, seed % 1000, "cpu") for i in range(2)]
    seq = b.sequence(m, k, 2)
    ref = b.reference_blocks(chunks, seq, torch.tensor([1, 3]), B, 1e-3, m)
    rows = torch.cat([chunks[p][:, :n] for p, n in seq], dim=1)  # (nb, m, B)
    from obert_kernels import ops

    full = ops.fisher_inverse_ref(rows.permute(1, 0, 2).reshape(m, nb * B), B, 1e-3)
    assert torch.allclose(ref, full[[1, 3]], rtol=1e-10, atol=0)
    assert chunks[0].abs().min() > 0  # never zeros


def test_tiny_cpu_run_writes_json_and_markdown(tmp_path):
    b = load()
    result = b.main(["--device", "cpu", "--backends", "naive,torch,direct,cuda-packed", "--rows", "0", "--d", "1234", "--num-grads", "40",
                     "--chunk", "16", "--ref-blocks", "5", "--repeats", "1", "--damp", "1e-3", "--out", str(tmp_path)])
    methods = result["methods"]
    assert methods["naive"]["speedup_vs_naive"] == 1.0
    assert methods["torch"]["within_spec_tolerance"]
    assert any(w in methods["cuda-packed"]["skipped"] for w in ("no CUDA device", "not built", "cpu"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".md")
    saved = json.loads((tmp_path / files[0]).read_text())
    assert saved["memory"]["packed_over_dense"] <= 0.55 and saved["environment"]["torch"] == torch.__version__
    assert "| naive |" in (tmp_path / files[1]).read_text()
