"""What a prune step did, per tensor and in total, and the collapse guard's warning."""
from __future__ import annotations

import statistics
import warnings
from dataclasses import asdict, dataclass, field, fields

__all__ = ["TensorReport", "PruneReport", "warn_collapsed", "COLLAPSE_LIMIT", "SHOW_ABOVE"]

# a global selection that takes a tensor above this is warned about: on the digits MLP at 90%,
# the per-tensor damp of issue 12 pruned 16,291 of the hidden layer's 16,384 weights (99.4%)
COLLAPSE_LIMIT = 0.99
# tensors above this sparsity are named in the per-tensor summary
SHOW_ABOVE = 0.95


@dataclass
class TensorReport:
    numel: int
    pruned: int  # pruned after this step, old and new
    newly_pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


@dataclass
class PruneReport:
    """Returned by FisherPruner.prune; ``str()`` gives a table."""

    target_sparsity: float
    pattern: str
    update: str
    global_sparsity: bool
    backend: str
    seconds: float
    tensors: dict[str, TensorReport] = field(default_factory=dict)
    damping: str = ""  # the damping policy and, for "auto", the λ it chose
    # the Fisher build that served the step, "auto" resolved ("" in reports from before they were
    # recorded, and for magnitude pruning): "direct" | "woodbury", "dense" | "packed"
    fisher_method: str = ""
    fisher_storage: str = ""

    @property
    def total(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def num_pruned(self) -> int:
        return sum(t.pruned for t in self.tensors.values())

    @property
    def newly_pruned(self) -> int:
        return sum(t.newly_pruned for t in self.tensors.values())

    @property
    def sparsity(self) -> float:
        return self.num_pruned / self.total if self.total else 0.0

    def above(self, limit: float) -> dict[str, float]:
        """name -> sparsity of the tensors pruned above ``limit``."""
        return {n: t.sparsity for n, t in self.tensors.items() if t.sparsity > limit}

    def tensor_summary(self) -> str:
        """'per-tensor sparsity min a / median b / max c' and the tensors above 95%, named."""
        if not self.tensors:
            return "per-tensor sparsity: no tensors"
        values = [t.sparsity for t in self.tensors.values()]
        line = (f"per-tensor sparsity min {min(values):.1%} / median {statistics.median(values):.1%} / "
                f"max {max(values):.1%}")
        high = self.above(SHOW_ABOVE)
        if high:
            line += f"; above {SHOW_ABOVE:.0%}: " + ", ".join(f"{n} ({s:.2%})" for n, s in high.items())
        return line

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(total=self.total, num_pruned=self.num_pruned, newly_pruned=self.newly_pruned, sparsity=self.sparsity,
                   tensor_summary=self.tensor_summary())
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PruneReport":
        """The report ``to_dict`` gave (its derived totals are ignored); ValueError if it is not one."""
        try:
            kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            kwargs["tensors"] = {name: TensorReport(**row) for name, row in data["tensors"].items()}
            return cls(**kwargs)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a PruneReport dict ({exc!r})") from None

    def __str__(self) -> str:
        width = max([len("total")] + [len(n) for n in self.tensors])
        lines = [
            f"prune to {self.target_sparsity:.2%} ({self.pattern}, update={self.update}, "
            f"{'global' if self.global_sparsity else 'per-tensor'}, backend={self.backend}"
            f"{', damp ' + self.damping if self.damping else ''}"
            f"{f', Fisher {self.fisher_method} {self.fisher_storage}' if self.fisher_method else ''}) in {self.seconds:.2f} s",
            f"{'tensor':<{width}}  {'weights':>12}  {'pruned':>12}  {'new':>10}  {'sparsity':>8}",
        ]
        for name, t in self.tensors.items():
            lines.append(f"{name:<{width}}  {t.numel:>12,}  {t.pruned:>12,}  {t.newly_pruned:>10,}  {t.sparsity:>8.2%}")
        lines.append(f"{'total':<{width}}  {self.total:>12,}  {self.num_pruned:>12,}  {self.newly_pruned:>10,}  {self.sparsity:>8.2%}")
        lines.append(self.tensor_summary())
        return "\n".join(lines)


def reports_from_dicts(history) -> list[PruneReport]:
    """A state_dict's "history" (a list of ``PruneReport.to_dict()``) as reports; ValueError naming a bad entry."""
    if not isinstance(history, (list, tuple)):
        raise ValueError(f"state_dict 'history' must be a list of reports, got {type(history).__name__}")
    out = []
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise ValueError(f"state_dict 'history'[{i}] is not a report dict")
        try:
            out.append(PruneReport.from_dict(entry))
        except ValueError as exc:
            raise ValueError(f"state_dict 'history'[{i}]: {exc}") from None
    return out


def warn_collapsed(report: PruneReport, limit: float = COLLAPSE_LIMIT) -> None:
    """Warn (UserWarning) when a global selection took a tensor above ``limit``, naming it:
    a layer pruned that far may have collapsed (the fix: FisherPruner(max_tensor_sparsity=...))."""
    high = report.above(limit) if report.global_sparsity else {}
    if high:
        names = ", ".join(f"{n} ({s:.2%})" for n, s in high.items())
        warnings.warn(f"the global selection pruned {len(high)} tensor(s) above {limit:.0%}: {names}; such a layer may "
                      f"have collapsed: cap it with max_tensor_sparsity= (--max-tensor-sparsity)", UserWarning, stacklevel=3)
