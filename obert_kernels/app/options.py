"""The command line's options as typed, frozen objects, parsed and checked once in ``app/cli.py``.

Each subcommand gets one object (``PruneOptions``, ``DemoOptions``, ``CheckOptions``, ...)
built by ``from_args`` from the argparse namespace, which goes no further: the app modules
take these objects and call the library (recipes/, integrations/, core/, ops/) with plain
keyword arguments.

Checked in two steps, both before a model loads: ``from_args`` checks the flags on their
own without importing torch (this module imports none, nor does anything it imports), so a
bad flag is refused before torch's start-up (issue 14); then the checks that need torch
(``PruneOptions.on_device``: the device present here, the pruner's config against it).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..core import arguments
from ..specs import BACKENDS, check_cuda_driver, check_direct_damp, parse_damp_spec, parse_pattern

__all__ = ["PrunerOptions", "PruneOptions", "DemoOptions", "BenchOptions", "InfoOptions", "CheckOptions", "read_texts"]

PRUNE_METHODS = ("obs", "joint", "sequential", "magnitude")  # recipes.prune_model.METHODS
FISHER_METHODS = ("auto", "direct", "woodbury")
FISHER_STORAGES = ("auto", "dense", "packed")  # core.config.FISHER_STORAGES, without importing torch
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
    fisher_storage: str = "auto"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PrunerOptions":
        if args.method not in PRUNE_METHODS:
            raise ValueError(f"--method must be one of {', '.join(PRUNE_METHODS)}, got {args.method!r}")
        if args.fisher_method not in FISHER_METHODS:
            raise ValueError(f"--fisher-method must be one of {', '.join(FISHER_METHODS)}, got {args.fisher_method!r}")
        pattern = parse_pattern(args.pattern)  # raises ValueError naming the accepted patterns
        if args.method != "magnitude":  # what check_for_device's config refuses, before torch's start-up
            pattern.check_block_size(_positive("block_size", args.block_size))
        damp = "auto" if args.damp is None else args.damp  # prune's default (--gradual sets its own first)
        if parse_damp_spec(damp).kind == "auto" and args.method != "magnitude":
            check_direct_damp(damp, args.fisher_method)  # the config's check, before torch's start-up
        cap = getattr(args, "max_tensor_sparsity", None)
        if cap is not None and not 0.0 < cap <= 1.0:
            raise ValueError(f"--max-tensor-sparsity must be in (0, 1], got {cap}")
        storage = getattr(args, "fisher_storage", "auto")
        if storage not in FISHER_STORAGES:
            raise ValueError(f"--fisher-storage must be one of {', '.join(FISHER_STORAGES)}, got {storage!r}")
        return cls(args.method, damp, _positive("block_size", args.block_size), _positive("num_grads", args.num_grads),
                   _positive("chunk_size", args.chunk_size), _positive("num_recomputations", args.num_recomputations),
                   args.pattern, bool(args.per_tensor), args.fisher_method, _backend(args.backend), cap, storage)

    def check_for_device(self, device: str) -> None:
        """Everything FisherPruner would refuse, refused now, before a model is loaded: the
        pattern vs --block-size, the damp vs --fisher-method, --backend vs the device (with the
        dispatch's reasons). Builds the pruner's config only (no tensor but one B×B sample)."""
        if self.method == "magnitude":
            return
        from ..core.config import PrunerConfig  # imports torch: the torch-free checks ran first
        from ..ops import BackendNotSupported

        try:
            PrunerConfig.from_args(block_size=self.block_size, num_grads=self.num_grads, damp=self.damp,
                                   pattern=self.pattern, global_sparsity=not self.per_tensor, update=self.method,
                                   backend=self.backend, chunk_size=self.chunk_size, fisher_method=self.fisher_method,
                                   fisher_storage=self.fisher_storage, verbose=False,
                                   max_memory_fraction=0.9).resolved_for(device)
        except BackendNotSupported as exc:
            raise ValueError(f"--backend {self.backend} on {device}: {exc}") from None

    def method_kwargs(self, verbose: bool) -> dict:
        """Keyword arguments of ``recipes.prune_model.prune_model`` beyond method and sparsity:
        the FisherPruner's for oBERT, the pattern and selection for magnitude."""
        if self.method == "magnitude":
            return {"pattern": self.pattern, "global_sparsity": not self.per_tensor}
        return {"block_size": self.block_size, "num_grads": self.num_grads, "chunk_size": self.chunk_size,
                "damp": self.damp, "pattern": self.pattern, "global_sparsity": not self.per_tensor,
                "fisher_method": self.fisher_method, "backend": self.backend, "verbose": verbose,
                "max_tensor_sparsity": self.max_tensor_sparsity, "fisher_storage": self.fisher_storage}


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
        if args.eval_sentences < 0 or args.eval_sentences == 1:
            raise ValueError(f"--eval-sentences must be 0 (no agreement check) or ≥ 2 (each held-out sentence's "
                             f"nearest neighbour is among the others), got {args.eval_sentences}")
        if args.model.lower() == "digits-mlp" and args.texts is not None:
            raise ValueError("--texts is for Hugging Face encoders; digits-mlp's Fisher comes from its own training images")
        options = cls(args.model, Path(args.out), args.sparsity, PrunerOptions.from_args(args), bool(args.overwrite),
                      _positive("batch_size", args.batch_size), args.texts, args.eval_sentences,
                      _positive("max_length", args.max_length), args.device, args.seed, not args.no_progress,
                      getattr(args, "fisher_labels", "true"))
        if options.texts is not None:  # a file too short is refused before torch and the model load
            options.check_texts()
        check_cuda_driver("--device", options.device)  # before torch's start-up where no driver is present
        return options.on_device()

    def on_device(self) -> "PruneOptions":
        """The checks that need torch, after the others: --device present here (digits-mlp: the
        CPU only) and the pruner's config against it. Returns the options with the device as torch names it."""
        device = str(arguments.check_device("--device", self.device))
        if self.model.lower() == "digits-mlp" and device != "cpu":
            raise ValueError(f"--device {self.device}: digits-mlp trains and prunes on the CPU only")
        self.pruner.check_for_device(device)
        return dataclasses.replace(self, device=device)

    def check_texts(self) -> None:
        """--texts exists and holds enough sentences for this run (``min_text_sentences``)."""
        found, needed = len(read_texts(self.texts)), self.min_text_sentences()
        if found < needed:
            held = "" if self.eval_sentences == 0 else (
                " and 2 held out for the agreement check (a quarter of the sentences, at most --eval-sentences, are held "
                "out; --eval-sentences 0 skips it)")
            raise ValueError(f"--texts {self.texts} holds {found} sentence(s) (non-empty lines); this run needs at least "
                             f"{needed}: one batch of --batch-size {self.batch_size} distinct sentences for the Fisher{held}")

    def min_text_sentences(self) -> int:
        """The fewest ``--texts`` sentences this run can use: a quarter of them, at most
        --eval-sentences, are held out, which needs ≥ 2 (when --eval-sentences > 0); the rest,
        the Fisher's, must fill one batch of --batch-size distinct sentences."""
        n = 1
        while True:
            held_out = min(self.eval_sentences, n // 4)
            if n - held_out >= self.batch_size and (self.eval_sentences == 0 or held_out >= 2):
                return n
            n += 1

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
                  "max_tensor_sparsity": p.max_tensor_sparsity, "fisher_storage": p.fisher_storage}
        return {k: str(v) for k, v in values.items()}


def read_texts(path: Path) -> list[str]:
    """The non-empty lines of a --texts file, stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"--texts {path}: no such file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


@dataclass(frozen=True)
class DemoOptions:
    """``demo``: the digits MLP pruned one-shot to each sparsity; plot None = table only."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    update: str = "obs"
    block_size: int = 32
    num_grads: int = 128
    damp: str = "1e-6"  # as typed, the forms ``prune --damp`` takes: "auto", "rel:α[:block]" or an absolute λ
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
        parse_damp_spec(args.damp)  # raises ValueError naming the accepted forms
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
        if args.d is not None and args.model:
            raise ValueError("pass --d or --model, not both (--model counts the model's weights)")
        check_cuda_driver("--device", args.device)
        device = None if args.device is None else str(arguments.check_device("--device", args.device))
        return cls(args.d, args.model, _positive("block_size", args.block_size), _positive("chunk_size", args.chunk_size),
                   device)


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
    import torch  # only once the torch-free checks passed

    try:
        device = torch.device(name)
    except RuntimeError as exc:  # a malformed name
        raise ValueError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: check runs on cpu and cuda devices")
    return str(device)
