"""gradual_prune: the schedule, exact zeros through AdamW, every method, errors before training."""
import copy

import pytest
import torch
from torch import nn

from obert_kernels import DistillationLoss, GradualSchedule, FisherPruner, finetune_with_masks, gradual_prune, prunable_weights
from obert_kernels.recipes.gradual_training import lr_factor, plan_pruning_steps


def _task(seed):
    """A tiny MLP and endless labelled batches; the labels come from a random teacher-like rule."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5))
    w = torch.randn(12, 5)
    gen = torch.Generator().manual_seed(seed + 1)

    def batches():
        while True:
            x = torch.randn(16, 12, generator=gen)
            yield x, (x @ w).argmax(-1)

    return model, batches


def _distill(model):
    return DistillationLoss(model, forward=lambda m, b: m(b[0]), task_loss=lambda out, b: nn.functional.cross_entropy(out, b[1]),
                            hardness=0.5, temperature=2.0)


class ZeroWatcher:
    """A loss_fn wrapper that, at each step, checks every weight found exactly zero before is zero still."""

    def __init__(self, loss_fn, params):
        self.loss_fn, self.params, self.zeros, self.checked = loss_fn, params, None, 0

    def __call__(self, model, batch):
        now = {n: t.detach() == 0 for n, t in self.params}
        if self.zeros is not None:
            for n, z in self.zeros.items():
                assert bool(now[n][z].all()), f"a pruned weight of {n} came back"
            self.checked += 1
        self.zeros = now
        return self.loss_fn(model, batch)


def test_lr_factor_warms_up_then_decays_linearly():
    assert [lr_factor(t, 10, 2) for t in range(3)] == [0.5, 1.0, 1.0]
    assert lr_factor(9, 10, 2) == pytest.approx(0.0)
    assert lr_factor(9, 10, 2, final_fraction=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 10, 0) == pytest.approx(1 - 5 / 9)


def test_plan_is_gradual_schedules_steps_without_zero_targets():
    plan = plan_pruning_steps(0, 30, 7, 0.0, 0.9)
    sched = GradualSchedule(FisherPruner(nn.Linear(4, 4), num_grads=2, verbose=False), final_sparsity=0.9,
                            start_step=0, end_step=30, update_every=7)
    assert [t for t, _ in plan] == sched.pruning_steps()[1:]  # step 0's cubic target is 0
    assert [s for _, s in plan] == [sched.sparsity_at(t) for t, _ in plan]
    assert plan[-1] == (30, pytest.approx(0.9))


@pytest.mark.parametrize("method,fresh", [("obs", False), ("obs", True), ("joint", True), ("sequential", True), ("magnitude", False)])
def test_gradual_prune_reaches_target_with_exact_zeros_through_adamw(seed, method, fresh):
    model, batches = _task(seed)
    params = prunable_weights(model)
    loss = ZeroWatcher(_distill(model), params)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    fisher = dict(fisher_loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), fisher_batches=batches()) if fresh else {}
    kwargs = {} if method == "magnitude" else dict(block_size=8, num_grads=4, damp="rel:0.01", verbose=False)
    run = gradual_prune(model, params, loss, batches(), 0.8, 40, method=method, prune_start=5, prune_end=29,
                        update_every=6, optimizer=opt, progress=False, **fisher, **kwargs)
    assert [s["step"] for s in run.prune_steps] == [11, 17, 23, 29]  # step 5's cubic target is 0
    assert run.prune_steps[-1]["sparsity"] == pytest.approx(0.8, abs=2e-3)
    assert loss.checked == 39
    named = dict(params)
    total = sum(m.numel() for m in run.masks.values())
    assert sum(int((~m).sum()) for m in run.masks.values()) / total == pytest.approx(0.8, abs=2e-3)
    for name, keep in run.masks.items():
        assert torch.all(named[name][~keep] == 0), name
        for value in opt.state[named[name]].values():  # AdamW's exp_avg, exp_avg_sq of pruned weights
            if value.shape == keep.shape:
                assert torch.all(value[~keep] == 0), name
    assert (run.pruner is None) == (method == "magnitude")
    assert run.train_seconds > 0 and len(run.losses) == 40


def test_without_the_mask_keeping_adamw_revives_pruned_weights(seed):
    """The check above can fail: masks applied once, AdamW with momentum and decay moves pruned weights."""
    model, batches = _task(seed)
    params = prunable_weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loss_fn = _distill(model)
    it = batches()
    for _ in range(3):  # momentum first
        opt.zero_grad()
        loss_fn(model, next(it)).backward()
        opt.step()
    with torch.no_grad():
        params[0][1][:4].zero_()
    opt.zero_grad()
    loss_fn(model, next(it)).backward()
    opt.step()
    assert not torch.all(params[0][1][:4] == 0)


def test_finetune_with_fixed_masks_keeps_them_and_recovers(seed):
    model, batches = _task(seed)
    params = prunable_weights(model)
    loss_fn = _distill(model)
    keep = {n: torch.rand(t.shape) > 0.7 for n, t in params}
    it = batches()
    probe = [next(it) for _ in range(4)]
    finetune_with_masks(model, params, keep, lambda m, b: 0 * m(b[0]).sum(), iter(probe), 1, progress=False, lr=0.0)
    pruned_loss = sum(loss_fn(model, b).item() for b in probe)
    # lr 3e-2: the probe loss fell on all of 2,000 seeds (worst ratio 0.942, median 0.818); at 3e-3 the
    # median fall was 1.4% and 3 of 300 seeds rose (CI seed 1296088479: 3.2186 -> 3.2213)
    run = finetune_with_masks(model, params, keep, loss_fn, batches(), 60, lr=3e-2, progress=False)
    named = dict(params)
    assert all(torch.all(named[n][~k] == 0) for n, k in keep.items())
    assert sum(loss_fn(model, b).item() for b in probe) < pruned_loss
    assert run.prune_seconds == 0 and run.pruner is None


def test_bad_schedules_fail_before_training(seed):
    model, batches = _task(seed)
    params = prunable_weights(model)
    before = copy.deepcopy(model.state_dict())
    calls = []

    def loss_fn(m, b):
        calls.append(1)
        return m(b[0]).sum()

    pk = dict(block_size=8, num_grads=16, damp="rel:0.01", verbose=False)
    with pytest.raises(ValueError, match=r"update_every \(4\) < num_grads \(16\)"):
        gradual_prune(model, params, loss_fn, batches(), 0.8, 40, prune_start=20, prune_end=32, update_every=4, **pk)
    with pytest.raises(ValueError, match="before the training loop has given num_grads"):
        gradual_prune(model, params, loss_fn, batches(), 0.8, 80, init_sparsity=0.3, prune_start=0, prune_end=40,
                      update_every=20, **pk)
    with pytest.raises(ValueError, match="must come before the last training step"):
        gradual_prune(model, params, loss_fn, batches(), 0.8, 10, prune_end=10, **pk)
    with pytest.raises(ValueError, match="init_sparsity ≤ sparsity < 1"):
        gradual_prune(model, params, loss_fn, batches(), 1.0, 40, **pk)
    with pytest.raises(ValueError, match="method"):
        gradual_prune(model, params, loss_fn, batches(), 0.5, 40, method="random")
    with pytest.raises(ValueError, match="prunes nothing"):
        gradual_prune(model, params, loss_fn, batches(), 0.0, 10, method="magnitude")
    assert not calls
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- the command line: prune --gradual ----------------------------------------------------
@pytest.fixture
def cli_ok():
    pytest.importorskip("sklearn", reason="the digits MLP needs scikit-learn ([demo] extra)")
    pytest.importorskip("safetensors", reason="writing safetensors needs the [models] extra")


DIGITS_ARGS = ["--gradual", "--train-steps", "40", "--num-grads", "8", "--block-size", "16", "--damp", "rel:0.01",
               "--no-progress"]


def test_cli_gradual_digits_writes_only_when_complete(cli_ok, tmp_path, capsys, monkeypatch):
    import json
    import os

    import safetensors.torch as st

    from obert_kernels.app import gradual_command
    from obert_kernels.app.cli import main
    from obert_kernels.integrations.export import load_masks

    from obert_kernels.app import demo

    full_train = demo.train
    monkeypatch.setattr(demo, "train", lambda model, data, **k: full_train(model, data, epochs=8, **k))  # test time
    out = tmp_path / "mlp"
    assert main(["prune", "digits-mlp", "--sparsity", "0.9", "--out", str(out), "--method", "joint"] + DIGITS_ARGS) == 0
    assert sorted(os.listdir(out)) == ["masks.safetensors", "model.safetensors", "obert_report.json"]
    weights, masks = st.load_file(str(out / "model.safetensors")), load_masks(out / "masks.safetensors")
    zeros = sum(int((weights[n] == 0).sum()) for n in masks) / sum(m.numel() for m in masks.values())
    report = json.loads((out / "obert_report.json").read_text())
    assert report["sparsity"] == pytest.approx(zeros) and zeros == pytest.approx(0.9, abs=2e-3)
    assert all(torch.all(weights[n][~m] == 0) for n, m in masks.items())
    assert report["method"] == "joint" and report["args"]["gradual"] == "True" and len(report["prune_steps"]) >= 2
    assert report["metrics"]["accuracy"] > 0.3
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "sparsity of the saved weights: 90.00%" in printed

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train", lambda model, data, **k: model)  # the dense training is not what is tested here
    monkeypatch.setattr(gradual_command, "gradual_prune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["prune", "digits-mlp", "--sparsity", "0.9", "--out", str(tmp_path / "mlp2")] + DIGITS_ARGS)
    assert sorted(os.listdir(tmp_path)) == ["mlp"]  # no output, no temporary directory


@pytest.mark.parametrize("extra,message", [
    (["--sparsity", "1.0"], "sparsity must be in"),
    (["--sparsity", "0.9", "--train-steps", "1"], "must come before the last training step"),
    (["--sparsity", "0.9", "--train-steps", "2", "--prune-end", "0.75"], "must come before the last training step"),
    (["--sparsity", "0.9", "--fisher-from", "train"], r"update_every \(1\) < num_grads \(8\)"),
    (["--sparsity", "0.9", "--method", "random"], "invalid choice"),
])
def test_cli_gradual_bad_input_fails_before_training(cli_ok, tmp_path, capsys, monkeypatch, extra, message):
    from obert_kernels.app import gradual_command
    from obert_kernels.app.cli import main

    def never(*a, **k):
        raise AssertionError("loaded a model or trained")

    monkeypatch.setattr(gradual_command, "_digits", never)
    args = ["prune", "digits-mlp", "--out", str(tmp_path / "o")] + DIGITS_ARGS + extra
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own refusal
        rc = exc.code
    assert rc == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_cli_gradual_encoder_and_a_mismatched_teacher(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="needs the [models] extra (transformers)")
    pytest.importorskip("safetensors", reason="needs the [models] extra (safetensors)")
    import json

    from test_hf import make_tiny_model_dir

    from obert_kernels.app.cli import main

    tiny = make_tiny_model_dir(tmp_path / "tiny")
    out = tmp_path / "pruned"
    gen = torch.Generator().manual_seed(0)
    words = "the a list of value name data file string object is in to for and return".split()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(" ".join(words[i] for i in torch.randint(len(words), (8,), generator=gen).tolist())
                               for _ in range(60)))
    args = ["prune", str(tiny), "--sparsity", "0.7", "--gradual", "--train-steps", "10", "--num-grads", "4",
            "--block-size", "16", "--eval-sentences", "12", "--train-batch-size", "4", "--texts", str(texts),
            "--damp", "rel:0.01", "--no-progress"]
    assert main(args + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean_cosine" in printed and "nn_agreement" in printed
    report = json.loads((out / "obert_report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.7, abs=2e-3) and 0 < report["metrics"]["mean_cosine"] <= 1
    model = transformers.AutoModel.from_pretrained(out, local_files_only=True)
    assert model.config.hidden_size == 32
    other = tmp_path / "other"
    make_tiny_model_dir(other)
    config = transformers.BertConfig.from_pretrained(other)
    config.hidden_size, config.intermediate_size = 16, 32
    transformers.BertModel(config).save_pretrained(other)
    assert main(args + ["--out", str(tmp_path / "o2"), "--teacher", str(other)]) == 2
    assert "teacher outputs (2, 16) do not match the student's (2, 32)" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
