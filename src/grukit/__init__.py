"""grukit: gated recurrent networks with exact semantics, fast CPU kernels and interop.

Subpackages: ``grukit.nn`` (torch drop-in layers), ``grukit.layers`` and ``grukit.models``
(Keras-style building), ``grukit.train`` (fit loop, callbacks, distributed), ``grukit.data``
(tokenizer, padding, readers). They are imported on first use, so ``import grukit`` stays fast.
"""

import importlib
import os
import sys

from . import errors
from .errors import ConfigError, DataError, GrukitError, ShapeError, TrainingError, UnsupportedKernelConfig

__version__ = "0.1.0"

_SUBPACKAGES = ("nn", "layers", "models", "train", "data")

# torch's OpenMP threads (GNU libgomp) busy-wait for milliseconds after every parallel region.
# When the fused kernels then split a batch over the same cores, those spinning threads take a
# core from them: a 2-thread S2 training step used 133 ms of CPU (torch's spinning included)
# against 80 ms with passive waiting, measured on this project's 2-core machine. libgomp reads
# the policy once, when torch loads it, so it is set here only if torch is not loaded yet and
# the user has not chosen one (OMP_WAIT_POLICY=ACTIVE keeps spinning).
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'grukit' has no attribute {name!r}")


__all__ = ["errors", *_SUBPACKAGES, "GrukitError", "ShapeError", "ConfigError", "DataError",
           "TrainingError", "UnsupportedKernelConfig", "__version__"]
