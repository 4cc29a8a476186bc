"""grukit: gated recurrent networks with exact semantics, fast CPU kernels and interop."""

from . import errors, nn
from .errors import ConfigError, DataError, GrukitError, ShapeError, UnsupportedKernelConfig

__version__ = "0.1.0"

__all__ = ["nn", "errors", "GrukitError", "ShapeError", "ConfigError", "DataError",
           "UnsupportedKernelConfig", "__version__"]
