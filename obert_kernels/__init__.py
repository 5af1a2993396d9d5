"""obert_kernels: second-order (Optimal BERT Surgeon) pruning with fused Fisher kernels.

The public names load on first use (PEP 562 ``__getattr__``): ``import obert_kernels`` and
``python -m obert_kernels`` do not import torch, so the command line refuses a bad flag
before torch's start-up (issue 14). ``from obert_kernels import FisherPruner`` works as
before; ``__all__`` and ``dir()`` list every name.
"""
# Measured on a loaded 2-core machine (2026-11-30), median of 5 wall times of a refused
# `python -m obert_kernels prune digits-mlp --sparsity 2 --out /tmp/x`: 13.6 s when this file
# imported everything (torch's import alone: 13.1 s by `python -X importtime`), 1.1 s lazy
# (`python -c pass`: 1.2 s at the time; torch is not imported).
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_SOURCES = {
    "FisherPruner": ".core.pruner",
    "GradualSchedule": ".recipes.gradual",
    "one_shot_prune": ".recipes.one_shot",
    "magnitude_prune": ".recipes.baselines",
    "prunable_weights": ".core.pruner",
    "cubic_sparsity": ".recipes.gradual",
    "estimate_memory": ".core.memory",
    "MemoryEstimate": ".core.memory",
    "FisherMemoryError": ".core.memory",
    "PruneReport": ".core.report",
    "Pattern": ".specs",
    "parse_pattern": ".specs",
    "ops": None,  # the subpackage itself
    "GaussNewtonProbe": ".recipes.probes",
    "gauss_newton_loss": ".recipes.probes",
    "SampledFisherProbe": ".recipes.probes",
    "sampled_label_loss": ".recipes.probes",
    "AbsoluteDamp": ".core.damping",
    "RelativeDamp": ".core.damping",
    "AutoDamp": ".core.damping",
    "DistillationLoss": ".recipes.distillation",
    "distillation_loss": ".recipes.distillation",
    "embedding_loss": ".recipes.distillation",
    "kd_loss": ".recipes.distillation",
    "frozen_teacher": ".recipes.distillation",
    "gradual_prune": ".recipes.gradual_training",
    "finetune_with_masks": ".recipes.gradual_training",
    "GradualRun": ".recipes.gradual_training",
    "MaskKeeper": ".recipes.gradual_training",
}

__all__ = [
    "FisherPruner",
    "GradualSchedule",
    "one_shot_prune",
    "magnitude_prune",
    "prunable_weights",
    "cubic_sparsity",
    "estimate_memory",
    "MemoryEstimate",
    "FisherMemoryError",
    "PruneReport",
    "Pattern",
    "parse_pattern",
    "ops",
    "GaussNewtonProbe",
    "gauss_newton_loss",
    "SampledFisherProbe",
    "sampled_label_loss",
    "AbsoluteDamp",
    "RelativeDamp",
    "AutoDamp",
    "DistillationLoss",
    "distillation_loss",
    "embedding_loss",
    "kd_loss",
    "frozen_teacher",
    "gradual_prune",
    "finetune_with_masks",
    "GradualRun",
    "MaskKeeper",
]


def __getattr__(name: str):
    """Import the module that defines ``name`` on first use and keep the name here."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    source = _SOURCES[name]
    value = importlib.import_module(".ops", __name__) if source is None else getattr(
        importlib.import_module(source, __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
