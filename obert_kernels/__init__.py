"""obert_kernels: second-order (Optimal BERT Surgeon) pruning with fused Fisher kernels."""
from . import ops
from .patterns import Pattern, parse_pattern

__version__ = "0.1.0"
from .baselines import magnitude_prune
from .damping import AbsoluteDamp, AutoDamp, RelativeDamp
from .memory import FisherMemoryError, MemoryEstimate, estimate_memory
from .one_shot import one_shot_prune
from .probes import GaussNewtonProbe, gauss_newton_loss
from .pruner import FisherPruner, prunable_weights
from .report import PruneReport
from .schedule import GradualSchedule, cubic_sparsity

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
]
