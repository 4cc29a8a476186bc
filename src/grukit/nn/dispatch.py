"""Chooses how a layer runs: the fused CPU kernels or the pure-torch reference loop.

``kernel="auto"`` takes the fused path wherever it is supported and the reference
otherwise; ``kernel="fused"`` raises :class:`UnsupportedKernelConfig` rather than
falling back silently; ``kernel="reference"`` always runs the pure-torch loop.

Two options are reference-only, whatever the kernels support: activations other than the
mode's defaults (``layout.has_default_activations`` is False) and recurrent dropout while
training (a mask inside every recurrent product). With recurrent dropout in eval mode no mask
is applied, so the fused kernels run.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, UnsupportedKernelConfig
from .cells import LAYOUTS, CellLayout
from .reference import DirectionWeights

KERNEL_CHOICES = ("auto", "fused", "reference")


def records_gradient(*tensors: torch.Tensor | None) -> bool:
    """True when autograd records operations on any of ``tensors`` (None entries are skipped): grad
    mode is on and one of them requires grad. The fused paths without a backward run only when not."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def validate_kernel_choice(kernel: str) -> str:
    if kernel not in KERNEL_CHOICES:
        raise ConfigError(f"kernel={kernel!r} is not a kernel choice; use one of {KERNEL_CHOICES} "
                          "('auto' picks the fused CPU kernel where it is supported)")
    return kernel


def reference_only_reason(layout: CellLayout | None, recurrent_dropout: bool) -> str | None:
    """Why an option of the layer itself needs the reference loop, or None."""
    if recurrent_dropout:
        return ("recurrent_dropout > 0 in training masks the state inside every recurrent product, "
                "which only the reference loop computes (in eval mode the fused kernel runs)")
    if layout is not None and not layout.has_default_activations:
        default = LAYOUTS[layout.mode]
        return (f"activation={layout.activation!r} and recurrent_activation={layout.recurrent_activation!r} "
                f"run on the reference loop only; the fused kernels compute activation={default.activation!r} "
                f"and recurrent_activation={default.recurrent_activation!r}")
    return None


def fused_unsupported_reason(mode: str, dtype: torch.dtype, device: torch.device,
                             weights: DirectionWeights | None, layout: CellLayout | None = None,
                             recurrent_dropout: bool = False) -> str | None:
    """None if the fused kernels cover this configuration, else why not.

    weights: the direction's recurrent weights, or None to leave their checks out; layout: the
    layer's layout (its activations); recurrent_dropout: whether a recurrent-dropout mask applies
    to this call (recurrent_dropout > 0 and training).
    """
    reason = reference_only_reason(layout, recurrent_dropout)
    if reason is not None:
        return reason
    try:
        from .kernels import function
    except ImportError as error:  # numba missing or kernels not built for this platform
        return f"the fused kernels could not be imported ({error})"
    return function.supports(mode, dtype, device, weights)


def choose_path(kernel: str, mode: str, dtype: torch.dtype, device: torch.device,
                weights: DirectionWeights, layout: CellLayout | None = None,
                recurrent_dropout: bool = False) -> str:
    """Return "fused" or "reference" for one layer and direction."""
    if kernel == "reference":
        return "reference"
    reason = fused_unsupported_reason(mode, dtype, device, weights, layout, recurrent_dropout)
    if reason is None:
        return "fused"
    if kernel == "fused":
        raise UnsupportedKernelConfig(
            f"kernel='fused' does not support this {mode} configuration: {reason}. "
            "Use kernel='auto' to fall back to the reference loop, or kernel='reference'.")
    return "reference"


__all__ = ["UnsupportedKernelConfig", "KERNEL_CHOICES", "validate_kernel_choice", "choose_path", "fused_unsupported_reason",
           "reference_only_reason"]
