"""Chooses how a layer runs: the fused CPU kernels or the pure-torch reference loop.

``kernel="auto"`` takes the fused path wherever it is supported and the reference
otherwise; ``kernel="fused"`` raises :class:`UnsupportedKernelConfig` rather than
falling back silently; ``kernel="reference"`` always runs the pure-torch loop.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, UnsupportedKernelConfig
from .reference import DirectionWeights

KERNEL_CHOICES = ("auto", "fused", "reference")


def validate_kernel_choice(kernel: str) -> str:
    if kernel not in KERNEL_CHOICES:
        raise ConfigError(f"kernel={kernel!r} is not a kernel choice; use one of {KERNEL_CHOICES} "
                          "('auto' picks the fused CPU kernel where it is supported)")
    return kernel


def fused_unsupported_reason(mode: str, dtype: torch.dtype, device: torch.device,
                             weights: DirectionWeights) -> str | None:
    """None if the fused kernels cover this configuration, else why not."""
    try:
        from .kernels import function
    except ImportError as error:  # numba missing or kernels not built for this platform
        return f"the fused kernels could not be imported ({error})"
    return function.supports(mode, dtype, device, weights)


def choose_path(kernel: str, mode: str, dtype: torch.dtype, device: torch.device,
                weights: DirectionWeights) -> str:
    """Return "fused" or "reference" for one layer and direction."""
    if kernel == "reference":
        return "reference"
    reason = fused_unsupported_reason(mode, dtype, device, weights)
    if reason is None:
        return "fused"
    if kernel == "fused":
        raise UnsupportedKernelConfig(
            f"kernel='fused' does not support this {mode} configuration: {reason}. "
            "Use kernel='auto' to fall back to the reference loop, or kernel='reference'.")
    return "reference"


__all__ = ["UnsupportedKernelConfig", "KERNEL_CHOICES", "validate_kernel_choice", "choose_path", "fused_unsupported_reason"]
