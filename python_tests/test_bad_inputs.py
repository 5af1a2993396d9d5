"""Bad input, API and command line: each refused up front with a clear message, nothing changed.

``CASES`` is the table the README's "Bad input" section shows (input -> outcome): each row
is asserted here (the exception type and a fragment of its message, or "accepted"), and
``test_readme_table_matches_the_cases`` keeps the README's copy equal to ``render_table()``.
After changing a case, rewrite the README's table with

    PYTHONPATH=. python python_tests/test_bad_inputs.py --write-readme

API cases get a fresh tiny model and check its weights are unchanged after the refusal.
CLI cases run ``main`` in-process with the model loaders replaced by ones that fail the
test: every refusal comes before a model is loaded (or the digits MLP trained).
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

import obert_kernels as ok
from obert_kernels import ops
from obert_kernels.core.arguments import ArgumentTypeError

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_START, TABLE_END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"
ONE_SENTENCE = "ONE_SENTENCE.txt"  # stands for a file holding one sentence (written by the test)
NO_CUDA = "no CUDA here"


@dataclass(frozen=True)
class Case:
    """One row: ``shown`` is the input as the README shows it; ``run(model)`` performs it (API)
    or ``argv`` is the command line (CLI, run with ``--out`` a fresh path for prune);
    ``error`` None means accepted; ``match`` a fragment of the message (or of stderr)."""

    shown: str
    error: type | None
    match: str = ""
    run: Callable | None = None
    argv: tuple[str, ...] = ()
    needs: str = ""

    @property
    def outcome(self) -> str:
        if self.error is None:
            return "accepted"
        if self.argv:
            return f"exit 2: `{self.match}`"
        return f"`{self.error.__name__}`: `{self.match}`"


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def _pruner(model, **kw):
    return ok.FisherPruner(model, block_size=4, num_grads=2, verbose=False, **kw)


def _loss(model, batch):
    return model(batch).sum()


def _batches():
    return [torch.randn(2, 8) for _ in range(4)]


def _schedule(model, **kw):
    args = dict(final_sparsity=0.5, start_step=0, end_step=10, update_every=5, loss_fn=_loss, batches=_batches(), model=model)
    return ok.GradualSchedule(_pruner(model), **{**args, **kw})


def _finv():
    return ops.init_finv(2, 4, 1.0)


def _api(shown, error, match, run):
    return Case(shown, error, match, run=run)


def _cli(shown, match, needs=""):
    return Case(shown, SystemExit, match, argv=tuple(shown.split()), needs=needs)


NAN = float("nan")
CASES = [
    # ---- API: numbers, ranges, strings, flags -------------------------------------------
    _api("magnitude_prune(model, 1.5)", ValueError, "sparsity must be in [0, 1)", lambda m: ok.magnitude_prune(m, 1.5)),
    _api("magnitude_prune(model, -0.5)", ValueError, "sparsity must be in [0, 1)", lambda m: ok.magnitude_prune(m, -0.5)),
    _api("magnitude_prune(model, True)", ArgumentTypeError, "sparsity must be a number",
         lambda m: ok.magnitude_prune(m, True)),
    _api("magnitude_prune(model, 0.5, global_sparsity='no')", ArgumentTypeError, "global_sparsity must be True or False",
         lambda m: ok.magnitude_prune(m, 0.5, global_sparsity="no")),
    _api("magnitude_prune(model, 1.5, pattern='2:4')", ValueError, "sparsity must be in [0, 1)",
         lambda m: ok.magnitude_prune(m, 1.5, pattern="2:4")),
    _api("magnitude_prune(model, np.float32(0.5))", None, "", lambda m: ok.magnitude_prune(m, np.float32(0.5))),
    _api("FisherPruner(model, damp=True)", ArgumentTypeError, "damp must be a finite number > 0",
         lambda m: _pruner(m, damp=True)),
    _api("FisherPruner(model, damp=float('nan'))", ValueError, "damp must be a finite number > 0",
         lambda m: _pruner(m, damp=NAN)),
    _api("FisherPruner(model, damp='rel:-1')", ValueError, "relative damp must be a finite number > 0",
         lambda m: _pruner(m, damp="rel:-1")),
    _api("FisherPruner(model, damp=np.float32(1e-6))", None, "", lambda m: _pruner(m, damp=np.float32(1e-6))),
    _api("FisherPruner(model, damp=torch.tensor(1e-6))", None, "", lambda m: _pruner(m, damp=torch.tensor(1e-6))),
    _api("FisherPruner(model, block_size=np.int64(4))", None, "",
         lambda m: ok.FisherPruner(m, block_size=np.int64(4), verbose=False)),
    _api("FisherPruner(model, max_memory_fraction=-1)", ValueError, "max_memory_fraction must be in (0, 1]",
         lambda m: _pruner(m, max_memory_fraction=-1)),
    _api("FisherPruner(model, max_memory_fraction=float('nan'))", ValueError, "max_memory_fraction must be in (0, 1]",
         lambda m: _pruner(m, max_memory_fraction=NAN)),
    _api("FisherPruner(model, block_size=0)", ValueError, "block_size must be a positive int",
         lambda m: ok.FisherPruner(m, block_size=0, verbose=False)),
    _api("FisherPruner(model, block_size=2.5)", ValueError, "block_size must be a positive int",
         lambda m: ok.FisherPruner(m, block_size=2.5, verbose=False)),
    _api("FisherPruner(model, num_grads=True)", ArgumentTypeError, "num_grads must be a positive int",
         lambda m: ok.FisherPruner(m, block_size=4, num_grads=True, verbose=False)),
    _api("FisherPruner(model, chunk_size=-1)", ValueError, "chunk_size must be a positive int",
         lambda m: _pruner(m, chunk_size=-1)),
    _api("FisherPruner(model, pattern='2:4', block_size=50)", ValueError, "must be divisible by the group size 4",
         lambda m: ok.FisherPruner(m, pattern="2:4", block_size=50, verbose=False)),
    _api("FisherPruner(model, pattern='3:2')", ValueError, "unknown pattern '3:2'", lambda m: _pruner(m, pattern="3:2")),
    _api("FisherPruner(model, update='exact')", ValueError, "update must be one of", lambda m: _pruner(m, update="exact")),
    _api("FisherPruner(model, fisher_method='qr')", ValueError, "fisher_method must be one of",
         lambda m: _pruner(m, fisher_method="qr")),
    _api("FisherPruner(model, fisher_storage='sparse')", ValueError, "fisher_storage must be one of",
         lambda m: _pruner(m, fisher_storage="sparse")),
    _api("FisherPruner(model, backend='numba')", ValueError, "backend must be 'auto' or one of",
         lambda m: _pruner(m, backend="numba")),
    _api("FisherPruner(model, backend='cuda')  # CPU tensors", ops.BackendNotSupported, "backend 'cuda' cannot run",
         lambda m: _pruner(m, backend="cuda")),
    _api("FisherPruner(model, damp='auto', fisher_method='woodbury')", ValueError, "needs the Fisher itself",
         lambda m: _pruner(m, damp="auto", fisher_method="woodbury")),
    _api("FisherPruner(model, verbose='no')", ArgumentTypeError, "verbose must be True or False",
         lambda m: ok.FisherPruner(m, block_size=4, verbose="no")),
    _api("FisherPruner(model, global_sparsity=None)", ArgumentTypeError, "global_sparsity must be True or False",
         lambda m: _pruner(m, global_sparsity=None)),
    _api("pruner.prune(1.5)", ValueError, "sparsity must be in [0, 1)", lambda m: _pruner(m).prune(1.5)),
    _api("pruner.prune(float('nan'))", ValueError, "sparsity must be in [0, 1)", lambda m: _pruner(m).prune(NAN)),
    _api("pruner.add_grads(grads holding a NaN)", ValueError, "non-finite",
         lambda m: _pruner(m).add_grads([torch.full_like(w, NAN) for _, w in ok.prunable_weights(m)])),
    # ---- API: recipes ---------------------------------------------------------------------
    _api("one_shot_prune(model, loss_fn, batches, 1.5)", ValueError, "sparsity must be in [0, 1)",
         lambda m: ok.one_shot_prune(m, _loss, _batches(), 1.5, progress=False)),
    _api("one_shot_prune(model, loss_fn, batches, 0.5, num_recomputations=0)", ValueError,
         "num_recomputations must be a positive int",
         lambda m: ok.one_shot_prune(m, _loss, _batches(), 0.5, num_recomputations=0, progress=False)),
    _api("one_shot_prune(model, 'mse', batches, 0.5)", ArgumentTypeError, "loss_fn must be callable",
         lambda m: ok.one_shot_prune(m, "mse", _batches(), 0.5, progress=False)),
    _api("one_shot_prune(model, loss_fn, 8, 0.5)", ArgumentTypeError, "batches must be an iterable",
         lambda m: ok.one_shot_prune(m, _loss, 8, 0.5, progress=False)),
    _api("GradualSchedule(pruner, final_sparsity=1.0, ...)", ValueError, "final_sparsity must be in [0, 1)",
         lambda m: _schedule(m, final_sparsity=1.0)),
    _api("GradualSchedule(pruner, init_sparsity=0.6, final_sparsity=0.5, ...)", ValueError,
         "must be ≤ final_sparsity", lambda m: _schedule(m, init_sparsity=0.6)),
    _api("GradualSchedule(pruner, start_step=5, end_step=2, ...)", ValueError, "need 0 <= start_step <= end_step",
         lambda m: _schedule(m, start_step=5, end_step=2)),
    _api("GradualSchedule(pruner, start_step=1.5, ...)", ArgumentTypeError, "start_step must be an int",
         lambda m: _schedule(m, start_step=1.5)),
    _api("GradualSchedule(pruner, update_every=0, ...)", ValueError, "update_every must be >= 1",
         lambda m: _schedule(m, update_every=0)),
    _api("GaussNewtonProbe('embed')", ArgumentTypeError, "forward must be callable", lambda m: ok.GaussNewtonProbe("embed")),
    _api("GaussNewtonProbe(forward, seed=True)", ArgumentTypeError, "seed must be an int",
         lambda m: ok.GaussNewtonProbe(_loss, seed=True)),
    # ---- API: the ops ---------------------------------------------------------------------
    _api("ops.woodbury_update(finv, grads holding an inf, 8)", ValueError, "grads hold(s) non-finite values",
         lambda m: ops.woodbury_update(_finv(), torch.tensor([[float("inf")] * 8]), 8)),
    _api("ops.fisher_accumulate(fisher, grads holding a NaN, 8)", ValueError, "grads hold(s) non-finite values",
         lambda m: ops.fisher_accumulate(torch.zeros(2, 4, 4), torch.full((1, 8), NAN), 8)),
    _api("ops.obs_scores(weight holding a NaN, finv)", ValueError, "weight hold(s) non-finite values",
         lambda m: ops.obs_scores(torch.full((8,), NAN), _finv())),
    _api("ops.obs_scores(weight, -finv)", ValueError, "finv is not positive definite",
         lambda m: ops.obs_scores(torch.ones(8), -_finv())),
    _api("ops.fisher_invert(fisher, True)", ArgumentTypeError, "damp must be a finite number > 0",
         lambda m: ops.fisher_invert(torch.zeros(2, 4, 4), True)),
    _api("ops.woodbury_update(finv, grads, np.int64(8))", None, "",
         lambda m: ops.woodbury_update(_finv(), torch.randn(1, 8), np.int64(8))),
    # ---- command line (prune: with --out a fresh directory) -----------------------------------
    _cli("prune digits-mlp --method magnitude --sparsity 2", "--sparsity must be in [0, 1), got 2.0"),
    _cli("prune digits-mlp --sparsity -0.5", "--sparsity must be in [0, 1), got -0.5"),
    _cli("prune digits-mlp --sparsity nan", "--sparsity must be in [0, 1), got nan"),
    _cli("prune digits-mlp --sparsity half", "argument --sparsity: invalid float value: 'half'"),
    _cli("prune all-MiniLM-L6-v2 --sparsity 0.5 --eval-sentences -5", "--eval-sentences must be 0 (no agreement check) or ≥ 2"),
    _cli("prune all-MiniLM-L6-v2 --sparsity 0.5 --eval-sentences 1", "--eval-sentences must be 0 (no agreement check) or ≥ 2"),
    _cli("prune all-MiniLM-L6-v2 --sparsity 0.5 --max-length 0", "--max-length must be ≥ 1, got 0"),
    _cli(f"prune all-MiniLM-L6-v2 --sparsity 0.5 --texts {ONE_SENTENCE}", "holds 1 sentence(s) (non-empty lines); this run needs at least 8"),
    _cli(f"prune digits-mlp --sparsity 0.5 --texts {ONE_SENTENCE}", "--texts is for Hugging Face encoders"),
    _cli("prune all-MiniLM-L6-v2 --sparsity 0.5 --device cuda", "no CUDA device here", needs=NO_CUDA),
    _cli("prune digits-mlp --sparsity 0.5 --device cuda", "no CUDA device here", needs=NO_CUDA),
    _cli("prune digits-mlp --sparsity 0.5 --device gpu", "--device 'gpu' is not a device"),
    _cli("prune digits-mlp --sparsity 0.5 --backend cuda", "--backend cuda on cpu: backend 'cuda' cannot run"),
    _cli("prune digits-mlp --sparsity 0.5 --damp true", "damp must be a number > 0, 'rel:α[:tensor|block|global]' or 'auto"),
    _cli("prune digits-mlp --sparsity 0.5 --damp 0", "damp must be a number > 0"),
    _cli("prune digits-mlp --sparsity 0.5 --damp nan", "damp must be a number > 0, 'rel:α[:tensor|block|global]'"),
    _cli("prune digits-mlp --sparsity 0.5 --damp rel:x", "damp must be a number > 0, 'rel:α[:tensor|block|global]'"),
    _cli("prune digits-mlp --sparsity 0.5 --damp auto --fisher-method woodbury", "needs the Fisher itself"),
    _cli("prune digits-mlp --sparsity 0.5 --block-size 0", "--block-size must be ≥ 1, got 0"),
    _cli("prune digits-mlp --sparsity 0.5 --pattern 2:4 --block-size 50", "must be divisible by the group size 4"),
    _cli("prune digits-mlp --sparsity 0.5 --pattern 4:2", "unknown pattern '4:2'"),
    _cli("prune digits-mlp --sparsity 0.5 --num-grads 0", "--num-grads must be ≥ 1, got 0"),
    _cli("prune digits-mlp --sparsity 0.5 --num-recomputations 0", "--num-recomputations must be ≥ 1, got 0"),
    _cli("prune digits-mlp --sparsity 0.5 --batch-size 0", "--batch-size must be ≥ 1, got 0"),
    _cli("prune digits-mlp --sparsity 0.5 --method prune", "argument --method: invalid choice: 'prune'"),
    _cli("info --d -5", "--d must be ≥ 1, got -5"),
    _cli("info --block-size 0", "--block-size must be ≥ 1, got 0"),
    _cli("info --d 1000 --model all-MiniLM-L6-v2", "pass --d or --model, not both"),
    _cli("info --device cuda", "no CUDA device here", needs=NO_CUDA),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(cases=CASES) -> str:
    """The README's table: one row per case, API first, then the command line."""
    rows = ["| input | outcome |", "| --- | --- |"]
    for case in cases:
        shown = ("obert-kernels " + case.shown) if case.argv else case.shown
        rows.append(f"| `{_cell(shown)}` | {_cell(case.outcome)} |")
    return "\n".join(rows)


def _table_span(text: str) -> re.Match:
    match = re.search(re.escape(TABLE_START) + r"\n(.*?)" + re.escape(TABLE_END), text, re.S)
    assert match, f"README.md has no {TABLE_START} ... {TABLE_END} section"
    return match


def _readme_table(text: str) -> str:
    return _table_span(text).group(1).rstrip("\n")


def test_readme_table_matches_the_cases():
    assert _readme_table(README.read_text(encoding="utf-8")) == render_table(), (
        "README's bad-input table differs from python_tests/test_bad_inputs.py's CASES: "
        "run `PYTHONPATH=. python python_tests/test_bad_inputs.py --write-readme`")


API_CASES = [c for c in CASES if not c.argv]
CLI_CASES = [c for c in CASES if c.argv]


@pytest.mark.parametrize("case", API_CASES, ids=[c.shown for c in API_CASES])
def test_api_case(case):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if case.error is None:
        case.run(model)
        return
    with pytest.raises(case.error) as info:
        case.run(model)
    assert case.match in str(info.value)
    if case.error is not ops.BackendNotSupported:
        assert isinstance(info.value, ValueError), "argument errors stay ValueErrors (ArgumentTypeError is both)"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused call changed the model"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a model or training the digits MLP fails the test: refusals come first."""
    from obert_kernels.app import demo
    from obert_kernels.integrations import hf_models

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(hf_models, "load_sentence_encoder", loaded)
    monkeypatch.setattr(demo, "load_digits_data", loaded)
    monkeypatch.setattr(demo, "train", loaded)


def test_the_loader_guard_catches_a_run_that_loads(tmp_path, no_model_loads):
    """The guard the CLI rows rely on: a valid command reaches a loader and fails the test."""
    from obert_kernels.app.cli import main

    for model in ("digits-mlp", "all-MiniLM-L6-v2"):
        with pytest.raises(AssertionError, match="a model was loaded"):
            main(["prune", model, "--sparsity", "0.5", "--out", str(tmp_path / model), "--no-progress"])


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.shown for c in CLI_CASES])
def test_cli_case(case, tmp_path, capsys, no_model_loads):
    from obert_kernels.app.cli import main

    if case.needs == NO_CUDA and torch.cuda.is_available():
        pytest.skip("a CUDA device is present here")
    (tmp_path / ONE_SENTENCE).write_text("One sentence is all this file holds.\n")
    argv = [str(tmp_path / a) if a == ONE_SENTENCE else a for a in case.argv]
    if argv[0] == "prune":
        argv += ["--out", str(tmp_path / "out"), "--no-progress"]
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and case.match in err, err
    assert not (tmp_path / "out").exists()
    # in-process (no interpreter start-up): well under a second on an idle machine; loose for a loaded one
    assert seconds < 5.0, f"refused after {seconds:.1f} s"


def test_what_counts_as_a_number():
    """ops.checks.real_scalar, the one definition every check above builds on."""
    from fractions import Fraction

    from obert_kernels.core import arguments
    from obert_kernels.ops.checks import real_scalar

    accepted = [(3, 3), (np.int32(3), 3), (torch.tensor(3), 3), (np.array(3), 3), (0.5, 0.5), (np.float16(0.5), 0.5),
                (torch.tensor(0.5, dtype=torch.bfloat16), 0.5), (np.array(0.5), 0.5), (Fraction(1, 2), 0.5)]
    for value, expected in accepted:
        got = real_scalar("x", value)
        assert got == expected and type(got) is type(expected), (value, got)
    refused = [True, np.bool_(False), torch.tensor(True), torch.ones(1), np.ones(2), "0.5", None, 1j,
               torch.tensor(1 + 1j), [0.5]]
    for value in refused:
        with pytest.raises(ArgumentTypeError, match="x must be a number"):
            real_scalar("x", value)
    assert arguments.check_fraction("f", np.float64(0.25)) == 0.25
    for bad in (1.0, -1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"f must be in \[0, 1\)"):
            arguments.check_fraction("f", bad)
    assert arguments.check_fraction("f", 1.0, low_open=True, high_closed=True) == 1.0
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        arguments.check_fraction("f", 0.0, low_open=True, high_closed=True)
    assert arguments.check_sparsity(None, "2:4") == 0.5 and arguments.check_sparsity(0.9, "2:4") == 0.5
    assert arguments.check_flag("b", np.bool_(True)) is True and arguments.check_flag("b", torch.tensor(False)) is False
    for bad in (0, 1, "yes", None):
        with pytest.raises(ArgumentTypeError, match="b must be True or False"):
            arguments.check_flag("b", bad)
    assert arguments.check_device("d", "cpu") == torch.device("cpu")


def _write_readme() -> None:
    text = README.read_text(encoding="utf-8")
    span = _table_span(text)
    new = text[: span.start(1)] + render_table() + "\n" + text[span.end(1) :]
    README.write_text(new, encoding="utf-8")
    print(f"{README}: table {'rewritten' if new != text else 'already current'} ({len(CASES)} cases)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-readme"]:
        _write_readme()
    else:
        print(render_table())
