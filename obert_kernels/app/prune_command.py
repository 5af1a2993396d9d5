"""``obert-kernels prune``: one-shot prune a model, check it, and write it as safetensors.

Hugging Face encoders (a directory or the built-in all-MiniLM-L6-v2): the Fisher is the
label-free Gauss-Newton probe over the sentence embeddings (``probes``), on sentences from
the standard library's docstrings (``text``) or ``--texts``; held-out sentences measure
how well the pruned embeddings agree with the dense ones. ``digits-mlp``: the digits demo's
MLP, trained here, with its cross-entropy Fisher; test accuracy is the check.

OUT/ gets: the pruned model (``model.safetensors`` + config/tokenizer files for HF
models), ``masks.safetensors`` (bool keep-masks by parameter name) and
``obert_report.json`` (arguments, versions, per-step time and peak memory, prune reports,
metrics). It appears only when everything was written.
"""
from __future__ import annotations

import copy
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..integrations.export import MASKS_FILE, atomic_output_dir, save_encoder_dir, check_output_dir, require_safetensors, save_masks, save_tensors
from .info import versions
from ..recipes.prune_model import memory_line, prune_model
from ..core.profiling import StepMeter
from .options import PruneOptions, read_texts

__all__ = ["run_prune", "BUILTIN_DIGITS"]

BUILTIN_DIGITS = "digits-mlp"
REPORT_FILE = "obert_report.json"
# sentence-transformers files copied as they are, so OUT/ also loads as a SentenceTransformer


def _steps(meter: StepMeter) -> list[dict]:
    return [{"step": r.name, "seconds": round(r.seconds, 3), "peak_bytes": r.peak_bytes, "memory": r.what} for r in meter.records]


def _print_steps(meter: StepMeter) -> None:
    for r in meter.records:
        print(f"  {r}")


def run_prune(options: PruneOptions) -> dict:
    """Run ``prune`` with its options; returns the report written to OUT/obert_report.json."""
    out = check_output_dir(options.out, options.overwrite)
    require_safetensors()  # fail before the long part, not at the end
    if options.texts is not None:  # a file too short is refused before the model loads (10–25 s)
        options.check_texts()
    if options.model.lower() == BUILTIN_DIGITS:
        report, write = _prune_digits(options)
    else:
        report, write = _prune_encoder(options)
    report.update(command="prune", args=options.report_args(), versions=versions(),
                  machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                  date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with atomic_output_dir(out, options.overwrite) as tmp:
        write(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return report


def _prune_encoder(options: PruneOptions):
    from ..integrations.hf_models import embedding_agreement, encoder_weights, load_sentence_encoder, sentence_batches
    from ..recipes.probes import GaussNewtonProbe
    from .text import split_sentences, stdlib_sentences

    if options.fisher_labels != "true":
        raise ValueError("--fisher-labels applies to digits-mlp only (an encoder's Fisher is the label-free Gauss-Newton probe)")
    encoder = load_sentence_encoder(options.model, device=options.device, max_length=options.max_length)
    sentences = read_texts(options.texts) if options.texts else stdlib_sentences()
    n_eval = min(options.eval_sentences, len(sentences) // 4)
    held_out, fisher_text = split_sentences(sentences, [n_eval, len(sentences) - n_eval], seed=options.seed)
    dense = encoder.encode(held_out) if n_eval >= 2 else None
    params = encoder_weights(encoder.model)
    print(f"{encoder.model_dir}: {sum(w.numel() for _, w in params):,} encoder Linear weights in {len(params)} tensors; "
          f"Fisher from {len(fisher_text)} sentences, {n_eval} held out", file=sys.stderr)
    run = prune_model(encoder.model, params, options.pruner.method, options.sparsity,
                      loss_fn=GaussNewtonProbe(encoder.embed, seed=options.seed),
                      batches=sentence_batches(encoder, fisher_text, options.batch_size, seed=options.seed + 1),
                      num_recomputations=options.pruner.num_recomputations, progress=options.progress,
                      **options.pruner.method_kwargs(verbose=options.progress))
    metrics = embedding_agreement(dense, encoder.encode(held_out)) if dense is not None else {}
    sparsity = _sparsity(run.masks)
    print(f"{options.pruner.method} to {sparsity:.2%}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    _print_tensor_summary(run)
    _print_steps(run.meter)
    if run.pruner is not None:
        print(memory_line(run.pruner, encoder.model, run.meter))
    report = {"model": str(encoder.model_dir), "method": options.pruner.method, "sparsity": sparsity, "held_out_sentences": n_eval,
              "metrics": metrics, "steps": _steps(run.meter),
              "prune_reports": [r.to_dict() for r in run.pruner.history] if run.pruner else []}

    def write(tmp: Path) -> None:
        save_encoder_dir(encoder, run.masks, tmp)

    return report, write


def _prune_digits(options: PruneOptions):
    from .demo import accuracy, cross_entropy_loss, endless_batches, load_digits_data, make_mlp, train
    from ..core.pruner import prunable_weights
    from ..recipes.probes import SampledFisherProbe

    data = load_digits_data(options.seed)
    model = train(make_mlp(options.seed), data, seed=options.seed)
    dense_acc = accuracy(model, data.x_test, data.y_test)
    loss_fn = cross_entropy_loss if options.fisher_labels == "true" else SampledFisherProbe(_logits, seed=options.seed)
    run = prune_model(model, prunable_weights(model), options.pruner.method, options.sparsity, loss_fn=loss_fn,
                      batches=endless_batches(data, 8, options.seed + 1), num_recomputations=options.pruner.num_recomputations,
                      progress=options.progress, **options.pruner.method_kwargs(verbose=options.progress))
    acc = accuracy(model, data.x_test, data.y_test)
    sparsity = _sparsity(run.masks)
    print(f"digits MLP 64-128-128-10: dense test accuracy {dense_acc:.2%}, {options.pruner.method} at {sparsity:.2%}: {acc:.2%}")
    _print_tensor_summary(run)
    _print_steps(run.meter)
    report = {"model": BUILTIN_DIGITS, "method": options.pruner.method, "sparsity": sparsity,
              "metrics": {"dense_accuracy": dense_acc, "accuracy": acc}, "steps": _steps(run.meter),
              "prune_reports": [r.to_dict() for r in run.pruner.history] if run.pruner else []}
    state = copy.deepcopy(model.state_dict())

    def write(tmp: Path) -> None:
        save_tensors(state, tmp / "model.safetensors", {"architecture": "nn.Sequential(Linear(64,128), ReLU, Linear(128,128), ReLU, Linear(128,10))"})
        save_masks(run.masks, tmp / MASKS_FILE)

    return report, write


def _logits(model, batch) -> torch.Tensor:
    """The digits MLP's logits of a (x, y) batch, for the sampled-label Fisher."""
    return model(batch[0])


def _print_tensor_summary(run) -> None:
    """The last prune step's per-tensor sparsity, compact (magnitude: from the masks)."""
    if run.pruner is not None and run.pruner.history:
        print(f"  {run.pruner.history[-1].tensor_summary()}")
        return
    from ..core.report import PruneReport, TensorReport

    report = PruneReport(0.0, "", "", True, "", 0.0, {n: TensorReport(m.numel(), int((~m).sum()), 0) for n, m in run.masks.items()})
    print(f"  {report.tensor_summary()}")


def _sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0
