"""Writing pruned models: safetensors files, into a directory that appears only when complete.

``atomic_output_dir(out)`` yields a hidden temporary directory beside ``out`` (same file
system, so the final rename is atomic); it becomes ``out`` only if the block finishes,
and is removed otherwise. A run that fails or is interrupted leaves ``out`` as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["check_output_dir", "atomic_output_dir", "save_masks", "load_masks", "save_tensors", "require_safetensors",
           "save_encoder_dir", "ST_FILES"]

MASKS_FILE = "masks.safetensors"


def require_safetensors():
    try:
        import safetensors.torch as st
    except ImportError as exc:
        raise ImportError("writing safetensors needs the safetensors package: pip install 'obert_kernels[models]'") from exc
    return st


def check_output_dir(out, overwrite: bool = False) -> Path:
    """Fail early (before a long run) if ``out`` cannot be written; returns its absolute path."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    return out


@contextmanager
def atomic_output_dir(out, overwrite: bool = False):
    """Yield a temporary directory that is renamed to ``out`` when the block completes.

    out must not exist unless overwrite=True (then the old directory is replaced only at
    the end, after everything was written). Raises FileExistsError up front otherwise.
    """
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _make_readable(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(root: Path) -> None:
    """mkdtemp (and some writers) create owner-only modes; give the result the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_tensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Contiguous CPU copies of ``tensors`` to one safetensors file."""
    st = require_safetensors()
    st.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def save_masks(masks: dict[str, torch.Tensor], path) -> None:
    """Bool keep-masks (True = kept), keyed by parameter name, with their overall sparsity in the metadata."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    save_tensors({k: v.bool() for k, v in masks.items()}, path,
                 {"format": "obert_kernels keep-masks (True = kept)", "sparsity": f"{1 - kept / max(total, 1):.6f}"})


# the sentence-transformers files beside an encoder's weights, copied with it when present
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling")


def save_encoder_dir(encoder, masks: dict[str, torch.Tensor], out) -> None:
    """A pruned Hugging Face encoder into ``out``: its weights (safetensors), tokenizer, the
    sentence-transformers files of its source directory, and the keep-masks (MASKS_FILE).
    encoder: ``hf_models.SentenceEncoder`` (``model``, ``tokenizer``, ``model_dir``)."""
    out = Path(out)
    encoder.model.save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    for name in ST_FILES:
        src = encoder.model_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        elif src.is_file():
            shutil.copy2(src, out / name)
    save_masks(masks, out / MASKS_FILE)


def load_masks(path) -> dict[str, torch.Tensor]:
    st = require_safetensors()
    return dict(st.load_file(str(path)))
