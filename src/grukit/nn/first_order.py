"""Backward functions that compute first-order gradients only, and say so under double backward.

The fused kernels and grukit's other hand-written backward functions (the embedded first layer,
the bfloat16 mode) give gradients, not graphs of them. torch's ``once_differentiable`` alone is
not enough to say so: it raises only when an incoming gradient requires grad, and a double backward
whose first loss is linear in the output (``autograd.grad(out.sum(), x, create_graph=True)``, as a
gradient penalty starts) passes it plain gradients, so the second backward ran and silently missed
every term through the saved weights. Under ``create_graph=True`` autograd runs backward with grad
mode on: that is the test here.
"""

from __future__ import annotations

import functools

import torch

from ..errors import UnsupportedKernelConfig


def first_order_backward(what: str, fix: str):
    """Decorator for an ``autograd.Function.backward``: ``once_differentiable``, and an
    :class:`UnsupportedKernelConfig` naming ``what`` computes the gradient and ``fix`` when autograd
    asks for a differentiable gradient (``create_graph=True``)."""
    def decorate(backward):
        once = torch.autograd.function.once_differentiable(backward)

        @functools.wraps(backward)
        def guarded(ctx, *grads):
            if torch.is_grad_enabled():
                raise UnsupportedKernelConfig(
                    f"{what} computes first-order gradients only, and this backward has "
                    f"create_graph=True (a double backward, such as a gradient penalty or a "
                    f"Hessian-vector product); {fix}")
            return once(ctx, *grads)
        return guarded
    return decorate


__all__ = ["first_order_backward"]
