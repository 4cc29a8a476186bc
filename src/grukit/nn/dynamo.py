"""The layers' forward and step() run eagerly under ``torch.compile`` (a graph break): TorchDynamo
cannot trace into the compiled kernels (it failed inside Numba's dispatcher on a kernel's first call,
tests/nn/test_torch_compile.py), and the fused kernels need no tracing.

``torch.compiler.disable`` as a decorator imports TorchDynamo where the class is defined: 1.0 s of
the 1.9 s that ``import grukit.nn`` took on the Zen 5 host, paid by every process, also one that
only runs a model. Nothing can compile before TorchDynamo is imported, so :func:`eager_under_compile`
disables the method on its first call that finds TorchDynamo imported, and until then calls it as
it is (a dictionary lookup a call)."""

from __future__ import annotations

import functools
import sys


def eager_under_compile(method):
    """``torch.compiler.disable(method)``, made when first needed (see the module docstring)."""
    @functools.wraps(method)
    def call(*args, **kwargs):
        disabled = getattr(method, "_grukit_disabled", None)
        if disabled is None:
            if "torch._dynamo" not in sys.modules:
                return method(*args, **kwargs)
            import torch._dynamo
            disabled = method._grukit_disabled = torch._dynamo.disable(method, wrapping=False)
        return disabled(*args, **kwargs)
    return call


__all__ = ["eager_under_compile"]
