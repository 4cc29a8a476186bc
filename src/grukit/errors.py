"""Exceptions raised by grukit. Every message names the argument, what was expected,
what was received, and how to fix it."""


class GrukitError(Exception):
    """Base class of every error grukit raises on purpose."""


class ShapeError(GrukitError, ValueError):
    """A tensor has the wrong rank or size."""


class ConfigError(GrukitError, ValueError):
    """An argument or a combination of arguments is not valid."""


class DataError(GrukitError, ValueError):
    """Input data is malformed: NaN, lengths out of range, corrupt or incomplete files."""


class UnsupportedKernelConfig(GrukitError, NotImplementedError):
    """kernel="fused" was requested for a configuration the fused kernels do not cover."""


class TrainingError(GrukitError, RuntimeError):
    """Training cannot go on: the loss became NaN or infinite. The weights are those of the last good step."""


__all__ = ["GrukitError", "ShapeError", "ConfigError", "DataError", "UnsupportedKernelConfig", "TrainingError"]
