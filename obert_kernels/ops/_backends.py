"""Load the optional backends: each registers its ops, or is marked unavailable with why.

``_triton`` (Triton kernels) and ``_cuda`` (the compiled extension in csrc/) each expose
``register_all()``; a failed import is recorded so ``not_supported_reasons`` can say it.
"""
from __future__ import annotations

import importlib

from ._dispatch import mark_unavailable

_OPTIONAL = {"triton": "._triton", "cuda": "._cuda"}


def load_optional_backends() -> None:
    for backend, module in _OPTIONAL.items():
        try:
            importlib.import_module(module, __package__).register_all()
        except ImportError as exc:
            mark_unavailable(backend, f"{backend} backend not available ({exc})")
