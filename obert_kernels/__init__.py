"""obert_kernels: second-order (Optimal BERT Surgeon) pruning with fused Fisher kernels."""
from . import ops
from .ops.patterns import Pattern, parse_pattern

__version__ = "0.1.0"
from .recipes.baselines import magnitude_prune
from .core.damping import AbsoluteDamp, AutoDamp, RelativeDamp
from .core.memory import FisherMemoryError, MemoryEstimate, estimate_memory
from .recipes.one_shot import one_shot_prune
from .recipes.probes import GaussNewtonProbe, SampledFisherProbe, gauss_newton_loss, sampled_label_loss
from .core.pruner import FisherPruner, prunable_weights
from .core.report import PruneReport
from .recipes.gradual import GradualSchedule, cubic_sparsity

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
]
