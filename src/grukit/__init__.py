"""grukit: gated recurrent networks with exact semantics, fast CPU kernels and interop.

Subpackages: ``grukit.nn`` (torch drop-in layers), ``grukit.layers`` and ``grukit.models``
(Keras-style building), ``grukit.train`` (fit loop, callbacks, distributed), ``grukit.data``
(tokenizer, padding, readers). They are imported on first use, so ``import grukit`` stays fast.
"""

import importlib

from . import errors
from .errors import ConfigError, DataError, GrukitError, ShapeError, TrainingError, UnsupportedKernelConfig

__version__ = "0.1.0"

_SUBPACKAGES = ("nn", "layers", "models", "train", "data", "tasks")

# OMP_WAIT_POLICY is left to the user (README, "Fast CPU kernels"): the kernels run on torch's own
# OpenMP team, so its spinning workers help them, and PASSIVE makes every wake-up slower.


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'grukit' has no attribute {name!r}")


__all__ = ["errors", *_SUBPACKAGES, "GrukitError", "ShapeError", "ConfigError", "DataError",
           "TrainingError", "UnsupportedKernelConfig", "__version__"]
