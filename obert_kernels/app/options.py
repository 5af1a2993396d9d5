"""The command line's options as typed, frozen objects, parsed and checked once in ``app/cli.py``.

Each subcommand gets one object (``PruneOptions``, ``DemoOptions``, ``CheckOptions``, ...)
built by ``from_args`` from the argparse namespace, which goes no further: the app modules
take these objects and call the library (recipes/, integrations/, core/, ops/) with plain
keyword arguments.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.damping import parse_damp
from ..ops import BACKENDS
from ..ops.patterns import parse_pattern

__all__ = ["PrunerOptions", "PruneOptions", "DemoOptions", "BenchOptions", "InfoOptions", "CheckOptions"]

PRUNE_METHODS = ("obs", "joint", "magnitude")
FISHER_METHODS = ("auto", "direct", "woodbury")
CHECK_DTYPES = ("float32", "float64")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
    return value


def _backend(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"--backend must be auto or one of {', '.join(BACKENDS)}, got {name!r}")
    return name


@dataclass(frozen=True)
class PrunerOptions:
    """The FisherPruner flags of ``prune``: method "obs" | "joint" | "magnitude"; damp as typed
    ("auto", "rel:α[:block]" or an absolute λ); pattern "unstructured" | "block4" | "N:M"."""

    method: str = "obs"
    damp: str = "auto"
    block_size: int = 50
    num_grads: int = 256
    chunk_size: int = 32
    num_recomputations: int = 1
    pattern: str = "unstructured"
    per_tensor: bool = False
    fisher_method: str = "auto"
    backend: str = "auto"
    max_tensor_sparsity: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PrunerOptions":
        if args.method not in PRUNE_METHODS:
            raise ValueError(f"--method must be one of {', '.join(PRUNE_METHODS)}, got {args.method!r}")
        if args.fisher_method not in FISHER_METHODS:
            raise ValueError(f"--fisher-method must be one of {', '.join(FISHER_METHODS)}, got {args.fisher_method!r}")
        parse_pattern(args.pattern)  # raises ValueError naming the accepted patterns
        parse_damp(args.damp)
        cap = getattr(args, "max_tensor_sparsity", None)
        if cap is not None and not 0.0 < cap <= 1.0:
            raise ValueError(f"--max-tensor-sparsity must be in (0, 1], got {cap}")
        return cls(args.method, args.damp, _positive("block_size", args.block_size), _positive("num_grads", args.num_grads),
                   _positive("chunk_size", args.chunk_size), _positive("num_recomputations", args.num_recomputations),
                   args.pattern, bool(args.per_tensor), args.fisher_method, _backend(args.backend), cap)

    def method_kwargs(self, verbose: bool) -> dict:
        """Keyword arguments of ``recipes.prune_model.prune_model`` beyond method and sparsity:
        the FisherPruner's for oBERT, the pattern and selection for magnitude."""
        if self.method == "magnitude":
            return {"pattern": self.pattern, "global_sparsity": not self.per_tensor}
        return {"block_size": self.block_size, "num_grads": self.num_grads, "chunk_size": self.chunk_size,
                "damp": self.damp, "pattern": self.pattern, "global_sparsity": not self.per_tensor,
                "fisher_method": self.fisher_method, "backend": self.backend, "verbose": verbose,
                "max_tensor_sparsity": self.max_tensor_sparsity}


@dataclass(frozen=True)
class PruneOptions:
    """``prune MODEL --sparsity S --out OUT``: the model (a directory, "all-MiniLM-L6-v2" or
    "digits-mlp"), the target, the pruner's options and the data's (HF encoders)."""

    model: str
    out: Path
    sparsity: float
    pruner: PrunerOptions = PrunerOptions()
    overwrite: bool = False
    batch_size: int = 4
    texts: Path | None = None
    eval_sentences: int = 500
    max_length: int = 128
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    fisher_labels: str = "true"  # digits-mlp: "true" (empirical Fisher) | "sampled" (labels from the model's softmax)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PruneOptions":
        if not 0.0 <= args.sparsity < 1.0:
            raise ValueError(f"--sparsity must be in [0, 1), got {args.sparsity}")
        if args.eval_sentences < 0:
            raise ValueError(f"--eval-sentences must be ≥ 0, got {args.eval_sentences}")
        return cls(args.model, Path(args.out), args.sparsity, PrunerOptions.from_args(args), bool(args.overwrite),
                   _positive("batch_size", args.batch_size), args.texts, args.eval_sentences,
                   _positive("max_length", args.max_length), args.device, args.seed, not args.no_progress,
                   getattr(args, "fisher_labels", "true"))

    def report_args(self) -> dict[str, str]:
        """The options as obert_report.json's "args" records them (each as text, in the flags' order)."""
        p = self.pruner
        values = {"command": "prune", "model": self.model, "out": self.out, "overwrite": self.overwrite,
                  "sparsity": self.sparsity, "method": p.method, "damp": p.damp, "block_size": p.block_size,
                  "num_grads": p.num_grads, "chunk_size": p.chunk_size, "num_recomputations": p.num_recomputations,
                  "pattern": p.pattern, "per_tensor": p.per_tensor, "fisher_method": p.fisher_method,
                  "backend": p.backend, "batch_size": self.batch_size, "texts": self.texts,
                  "eval_sentences": self.eval_sentences, "max_length": self.max_length, "device": self.device,
                  "seed": self.seed, "no_progress": not self.progress, "fisher_labels": self.fisher_labels,
                  "max_tensor_sparsity": p.max_tensor_sparsity}
        return {k: str(v) for k, v in values.items()}


@dataclass(frozen=True)
class DemoOptions:
    """``demo``: the digits MLP pruned one-shot to each sparsity; plot None = table only."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    update: str = "obs"
    block_size: int = 32
    num_grads: int = 128
    damp: float = 1e-6
    num_recomputations: int = 4
    backend: str = "auto"
    seed: int = 0
    plot: Path | None = Path("obert-demo.png")
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoOptions":
        for s in args.sparsities:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"--sparsities must be in [0, 1), got {s}")
        return cls(tuple(args.sparsities), args.update, _positive("block_size", args.block_size),
                   _positive("num_grads", args.num_grads), args.damp, _positive("num_recomputations", args.num_recomputations),
                   _backend(args.backend), args.seed, None if args.no_plot else Path(args.plot), not args.no_progress)


@dataclass(frozen=True)
class BenchOptions:
    """``bench``: scripts by name (none: all), --list, --quick, and the arguments after ``--``."""

    names: tuple[str, ...] = ()
    list_only: bool = False
    quick: bool = False
    bench_dir: Path | None = None
    extra_args: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace, extra_args=()) -> "BenchOptions":
        return cls(tuple(args.names), bool(args.list), bool(args.quick), args.bench_dir, tuple(extra_args))


@dataclass(frozen=True)
class InfoOptions:
    """``info``: a memory estimate for d weights (or a model's encoder weights) at B and k."""

    d: int | None = None
    model: str | None = None
    block_size: int = 50
    chunk_size: int = 32
    device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "InfoOptions":
        if args.d is not None:
            _positive("d", args.d)
        return cls(args.d, args.model, _positive("block_size", args.block_size), _positive("chunk_size", args.chunk_size),
                   args.device)


@dataclass(frozen=True)
class CheckOptions:
    """``check``: seed of the inputs; quick = one pattern (2:4) instead of three; devices and
    backends to check (None: all present / all); dtype the ops compute in; JSON output path;
    interpret: run again with TRITON_INTERPRET=1 (Triton on a CPU)."""

    seed: int = 0
    quick: bool = False
    devices: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    dtype: str = "float32"
    json_path: Path | None = None
    interpret: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CheckOptions":
        if args.dtype not in CHECK_DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(CHECK_DTYPES)}, got {args.dtype!r}")
        for name in args.backend or ():
            if name not in BACKENDS:
                raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
        devices = tuple(dict.fromkeys(_check_device(d) for d in args.device)) if args.device else None
        backends = tuple(dict.fromkeys(args.backend)) if args.backend else None
        return cls(args.seed, bool(args.quick), devices, backends, args.dtype, args.json, bool(args.interpret))

    def to_argv(self, interpret: bool | None = None) -> list[str]:
        """The flags that give these options again (``check`` runs itself again for --interpret)."""
        argv = ["--seed", str(self.seed), "--dtype", self.dtype]
        argv += ["--quick"] if self.quick else []
        for device in self.devices or ():
            argv += ["--device", device]
        for backend in self.backends or ():
            argv += ["--backend", backend]
        argv += ["--json", str(self.json_path)] if self.json_path is not None else []
        return argv + (["--interpret"] if (self.interpret if interpret is None else interpret) else [])

    def report_dict(self) -> dict:
        return {"seed": self.seed, "quick": self.quick, "devices": self.devices, "backends": self.backends,
                "dtype": self.dtype, "json": None if self.json_path is None else str(self.json_path),
                "interpret": self.interpret}


def _check_device(name: str) -> str:
    try:
        device = torch.device(name)
    except RuntimeError as exc:  # a malformed name
        raise ValueError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: check runs on cpu and cuda devices")
    return str(device)
