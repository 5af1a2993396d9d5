"""The command line: info, bench discovery and runs, prune of the built-in digits MLP, demo plot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from obert_kernels.app import bench_runner as benchrun
from obert_kernels.app.cli import main
from obert_kernels.core.config import auto_fisher_storage

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_backends_with_reasons_and_a_memory_estimate(capsys):
    assert main(["info", "--d", "10616832", "--block-size", "50", "--chunk-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "backends on cpu" in out and "torch" in out and "versions:" in out
    for op in ("woodbury_update", "fisher_accumulate", "fisher_invert", "obs_scores", "obs_update"):
        assert f"{op:<18} torch   yes" in out
    # every backend that cannot run says why
    for line in out.splitlines():
        if " no" in line and ("triton" in line or "cuda " in line):
            assert ": " in line.split(" no", 1)[1]
    # the storage fisher_storage="auto" picks here: packed (cpp built) or dense
    packed = auto_fisher_storage(torch.device("cpu"), "direct", block_size=50) == "packed"
    assert f"fisher_storage='auto': {'packed' if packed else 'dense'}" in out
    assert "212,337 blocks of 50" in out and ("F⁻¹ 1.01 GiB (packed)" if packed else "F⁻¹ 1.98 GiB") in out


def test_python_dash_m_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "obert_kernels", "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0 and all(c in res.stdout for c in ("demo", "prune", "bench", "info"))


def _fake_bench(tmp_path):
    (tmp_path / "bench_fake_cpu.py").write_text(
        'import sys\nQUICK_ARGS = ["--n", "3"]\nprint("fake cpu ran", sys.argv[1:])\n')
    (tmp_path / "bench_fake_triton_gpu.py").write_text('raise SystemExit("must not run here")\n')
    (tmp_path / "bench_broken_cpu.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "helper.py").write_text("# not a benchmark\n")
    return tmp_path


def test_bench_discovers_scripts_and_what_they_need(tmp_path, capsys):
    bench = _fake_bench(tmp_path)
    scripts = {s.name: s for s in benchrun.discover(bench)}
    assert set(scripts) == {"bench_fake_cpu", "bench_fake_triton_gpu", "bench_broken_cpu"}
    assert scripts["bench_fake_cpu"].runnable and scripts["bench_fake_cpu"].quick_args == ["--n", "3"]
    gpu = scripts["bench_fake_triton_gpu"]
    assert gpu.requires == ("triton", "cuda-device")
    if not torch.cuda.is_available():
        assert not gpu.runnable and any("CUDA device" in m for m in gpu.missing)
    assert main(["bench", "--list", "--bench-dir", str(bench)]) == 0
    assert "skipped" in capsys.readouterr().out or torch.cuda.is_available()
    with pytest.raises(ValueError, match="no benchmark nope"):
        benchrun.discover(bench, ["nope"])
    # the real checkout's CPU benchmark is found, with its quick arguments
    real = {s.name: s for s in benchrun.discover(ROOT / "bench")}
    assert real["bench_woodbury_cpu"].runnable and real["bench_woodbury_cpu"].quick_args


def test_bench_runs_what_it_can_and_reports_failures(tmp_path, capfd):
    bench = _fake_bench(tmp_path)
    assert main(["bench", "--quick", "--bench-dir", str(bench), "fake_cpu", "--", "--extra"]) == 0
    out = capfd.readouterr().out
    assert "fake cpu ran ['--n', '3', '--extra']" in out and "bench_fake_cpu" in out and "ok in" in out
    assert main(["bench", "--bench-dir", str(bench)]) == 1  # bench_broken_cpu exits 3
    out = capfd.readouterr().out
    assert "failed (exit 3)" in out and ("skipped" in out or torch.cuda.is_available())
    assert main(["bench", "--bench-dir", str(bench), "nope"]) == 2


@pytest.fixture
def digits_ok():
    pytest.importorskip("sklearn", reason="the digits MLP needs scikit-learn ([demo] extra)")
    pytest.importorskip("safetensors", reason="writing safetensors needs the [models] extra")


def test_prune_digits_writes_safetensors_only_when_complete(digits_ok, tmp_path, capsys, monkeypatch):
    from obert_kernels.app import prune_command as prune_cli
    from obert_kernels.integrations.export import load_masks

    out = tmp_path / "mlp"
    args = ["prune", "digits-mlp", "--sparsity", "0.7", "--out", str(out), "--num-grads", "16", "--block-size", "16",
            "--damp", "rel:0.01", "--no-progress"]
    assert main(args) == 0
    assert sorted(os.listdir(out)) == ["masks.safetensors", "model.safetensors", "obert_report.json"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not left owner-only by mkdtemp
    masks = load_masks(out / "masks.safetensors")
    import safetensors.torch as st

    weights = st.load_file(str(out / "model.safetensors"))
    assert sum(int((~m).sum()) for m in masks.values()) == pytest.approx(0.7 * sum(m.numel() for m in masks.values()), abs=1)
    for name, mask in masks.items():
        assert torch.all(weights[name][~mask] == 0)
    report = json.loads((out / "obert_report.json").read_text())
    assert report["metrics"]["accuracy"] > 0.5 and [s["step"] for s in report["steps"]] == ["gradients 1/1", "prune 1/1"]
    assert "accuracy" in capsys.readouterr().out
    # a run that fails while writing leaves no output and no temporary directory behind
    out2 = tmp_path / "mlp2"

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(prune_cli, "save_masks", boom)
    with pytest.raises(OSError, match="simulated"):
        main(args[:5] + [str(out2)] + args[6:])
    assert not out2.exists() and sorted(os.listdir(tmp_path)) == ["mlp"]


def test_prune_digits_sampled_fisher_cap_and_tensor_summary(digits_ok, tmp_path, capsys):
    """--fisher-labels sampled and --max-tensor-sparsity reach the pruner; the summary shows per-tensor sparsity."""
    out = tmp_path / "mlp"
    args = ["prune", "digits-mlp", "--sparsity", "0.8", "--out", str(out), "--num-grads", "16", "--block-size", "16",
            "--fisher-labels", "sampled", "--max-tensor-sparsity", "0.85", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "per-tensor sparsity min" in printed
    report = json.loads((out / "obert_report.json").read_text())
    assert report["args"]["fisher_labels"] == "sampled" and report["args"]["max_tensor_sparsity"] == "0.85"
    tensors = report["prune_reports"][0]["tensors"]
    assert max(t["pruned"] / t["numel"] for t in tensors.values()) <= 0.85
    assert sum(t["pruned"] for t in tensors.values()) == round(0.8 * sum(t["numel"] for t in tensors.values()))
    assert main(args[:-3] + ["--max-tensor-sparsity", "1.5", "--no-progress"]) == 2  # refused with the reason


def test_prune_digits_packed_storage_prunes_what_dense_does(digits_ok, tmp_path, capsys):
    """--fisher-storage packed reaches the pruner (with the CLI's damp, auto) and prunes the same weights."""
    masks = {}
    for storage in ("dense", "packed"):
        out = tmp_path / storage
        assert main(["prune", "digits-mlp", "--sparsity", "0.8", "--out", str(out), "--num-grads", "16",
                     "--block-size", "16", "--fisher-storage", storage, "--no-progress"]) == 0
        assert json.loads((out / "obert_report.json").read_text())["args"]["fisher_storage"] == storage
        masks[storage] = load_file(out / "masks.safetensors")
    assert masks["dense"].keys() == masks["packed"].keys()
    assert all(torch.equal(masks["dense"][k], masks["packed"][k]) for k in masks["dense"])


def test_demo_writes_the_plot(digits_ok, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib ([plot] extra)")
    png = tmp_path / "plot.png"
    assert main(["demo", "--sparsities", "0.5", "0.8", "--num-grads", "16", "--num-recomputations", "1",
                 "--plot", str(png), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "oBERT" in out and "magnitude" in out and f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bench_dir_defaults_to_the_checkouts_bench(monkeypatch):
    """Without OBERT_BENCH_DIR, `bench` finds this checkout's bench/ (the package moved into app/ once)."""
    monkeypatch.delenv("OBERT_BENCH_DIR", raising=False)
    found = benchrun.find_bench_dir()
    assert found == Path(__file__).resolve().parents[1] / "bench"
    assert (found / "bench_woodbury_cpu.py").is_file()


@pytest.mark.parametrize("damp", ["auto", "rel:0.01", "rel:0.01:block", "1e-7"])
def test_demo_takes_the_damp_forms_of_prune(damp, monkeypatch):
    """``demo --damp`` accepts what ``prune --damp`` does and hands it on as typed (issue 14)."""
    from obert_kernels.app import demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: seen.update(kw) or [])
    assert main(["demo", "--damp", damp, "--no-plot", "--no-progress"]) == 0
    assert seen["damp"] == damp


def test_demo_refuses_a_bad_damp_before_training(monkeypatch, capsys):
    from obert_kernels.app import demo

    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: pytest.fail("trained despite a bad --damp"))
    assert main(["demo", "--damp", "rel:x", "--no-plot"]) == 2
    assert "damp must be" in capsys.readouterr().err


def test_busy_machine_hint_only_when_loaded_and_threaded(monkeypatch):
    from obert_kernels.app import cli

    cores = os.cpu_count() or 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    hint = cli.busy_machine_hint()
    assert hint is not None and "OMP_NUM_THREADS=1" in hint and f"{cores} cores" in hint
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
    assert cli.busy_machine_hint() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # already one thread: nothing to suggest
    assert cli.busy_machine_hint() is None


def test_demo_table_has_a_sequential_column_when_it_ran(capsys):
    from obert_kernels.app.demo import print_demo_table

    row = {"sparsity": 0.9, "obert": 0.8285, "magnitude": 0.3408, "seconds": 1.0, "dense": 0.98}
    print_demo_table([{**row, "sequential": 0.8931}], "update=obs")
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["sparsity", "oBERT", "sequential", "magnitude", "prune", "s"]
    assert lines[2].split()[:4] == ["90%", "82.85%", "89.31%", "34.08%"]
    print_demo_table([{**row, "sequential": None}], "update=sequential")
    assert "sequential" not in capsys.readouterr().out.splitlines()[1]
