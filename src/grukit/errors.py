"""Exceptions raised by grukit. Every message names the argument, what was expected,
what was received, and how to fix it."""

import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class GrukitError(Exception):
    """Base class of every error grukit raises on purpose."""


class ShapeError(GrukitError, ValueError, RuntimeError):
    """A tensor has the wrong rank or size. Also a RuntimeError, which torch.nn's layers raise for
    wrong shapes, so that code written for them catches it unchanged."""


class ConfigError(GrukitError, ValueError):
    """An argument or a combination of arguments is not valid."""


class ConfigKeywordError(ConfigError, TypeError):
    """A config got a keyword it does not have. Also a TypeError, which Python raises for an unknown
    keyword argument, so that code catching that keeps working."""


class DataError(GrukitError, ValueError):
    """Input data is malformed: NaN, lengths out of range, corrupt or incomplete files."""


class UnsupportedKernelConfig(GrukitError, NotImplementedError):
    """kernel="fused" was requested for a configuration the fused kernels do not cover."""


class TrainingError(GrukitError, RuntimeError):
    """Training cannot go on: the loss became NaN or infinite. The weights are those of the last good step."""


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` in the function that calls this one that points at
    the first caller outside grukit (Sequential.fit, a task's fit ... lie in between)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        frame, level = frame.f_back, level + 1
    return level


__all__ = ["user_stacklevel", "GrukitError", "ShapeError", "ConfigError", "ConfigKeywordError", "DataError",
           "UnsupportedKernelConfig", "TrainingError"]
