"""Libraries inside torch's installed package (MKL's GEMMs, libgomp), found on disk and opened
with ctypes, so that the kernels can share them without importing torch."""

from __future__ import annotations

import ctypes
import importlib.util
import os


def open_torch_library(filename: str, symbols: tuple[str, ...]) -> ctypes.CDLL | None:
    """torch/lib/``filename`` opened, if it exists and exports every name in ``symbols``; else None."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "lib", filename)
    if not os.path.exists(path):
        return None
    try:
        library = ctypes.CDLL(path)
        for name in symbols:
            getattr(library, name)
    except (OSError, AttributeError):
        return None
    return library
