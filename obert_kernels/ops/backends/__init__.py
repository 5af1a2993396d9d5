"""The backends, one folder each; each registers its kernels with ``ops.dispatch``.

``torch/`` serves every call and always loads. ``triton/`` (Triton kernels), ``cuda/``
(launchers of the compiled extension in csrc/) and ``cpp/`` (the compiled CPU kernels of
csrc/cpu/) are optional: a failed import is recorded
so ``not_supported_reasons`` can say why they are absent.
"""
from __future__ import annotations

import importlib

from ..dispatch import mark_unavailable

__all__ = ["load_backends", "optional_extension", "OPTIONAL_BACKENDS"]

OPTIONAL_BACKENDS = {"triton": ".triton", "cuda": ".cuda", "cpp": ".cpp"}


def optional_extension(name: str):
    """(the compiled module ``name``, "") or (None, why it did not import): a missing extension
    is a reason a backend gives, not an import error."""
    try:
        return importlib.import_module(name), ""
    except ImportError as exc:  # pragma: no cover - depends on the build
        return None, str(exc)


def load_backends() -> None:
    """Register the torch backend, then each optional backend that imports."""
    importlib.import_module(".torch", __package__).register_all()
    for backend, module in OPTIONAL_BACKENDS.items():
        try:
            importlib.import_module(module, __package__).register_all()
        except ImportError as exc:
            mark_unavailable(backend, f"{backend} backend not available ({exc})")
