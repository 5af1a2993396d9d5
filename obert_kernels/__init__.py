"""obert_kernels: second-order (Optimal BERT Surgeon) pruning with fused Fisher kernels."""
from . import ops
from .ops.patterns import Pattern, parse_pattern

__version__ = "0.1.0"
from .recipes.baselines import magnitude_prune
from .core.damping import AbsoluteDamp, AutoDamp, RelativeDamp
from .core.memory import FisherMemoryError, MemoryEstimate, estimate_memory
from .recipes.one_shot import one_shot_prune
from .recipes.probes import GaussNewtonProbe, gauss_newton_loss
from .core.pruner import FisherPruner, prunable_weights
from .core.report import PruneReport
from .recipes.gradual import GradualSchedule, cubic_sparsity
from .recipes.distillation import DistillationLoss, distillation_loss, embedding_loss, frozen_teacher, kd_loss
from .recipes.gradual_training import GradualRun, MaskKeeper, finetune_with_masks, gradual_prune

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
