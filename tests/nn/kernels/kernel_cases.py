"""Shared builders for the fused-kernel parity tests (random cases, outputs and gradients)."""

from __future__ import annotations

import torch

from grukit.nn.kernels import api
from grukit.nn.reference import DirectionWeights

MODES = api.MODES
BIASED = api.HAS_BIAS_HH


def make_case(mode, T, B, H, dtype=torch.float64, seed=0, bias=True, ragged=False):
    """gx, state0, weights, lengths and the leaves whose gradients the tests compare."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    gx = rand(T, B, api.GATES[mode] * H)
    h0 = rand(B, H, scale=0.5)
    leaves = [gx, h0]
    state0 = h0
    if mode == "LSTM":
        c0 = rand(B, H, scale=0.5)
        state0 = (h0, c0)
        leaves.append(c0)
    rows = api.RECURRENT_ROWS[mode] * H
    w = rand(rows, H, scale=0.8 / H ** 0.5) if rows else None
    b = rand(rows, scale=0.3) if rows and bias and mode in BIASED else None
    leaves += [t for t in (w, b) if t is not None]
    lengths = None
    if ragged:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        lengths[-1] = 1
    return gx, state0, DirectionWeights(w, b), lengths, leaves


def outputs_and_grads(run, mode, case, reverse, candidate="identity", seed=1):
    """Run ``run`` (run_direction or fused_run_direction); return outputs, final state(s)
    and the gradients of a random projection w.r.t. every leaf of the case."""
    gx, state0, weights, lengths, leaves = case
    out, state = run(mode, gx, state0, weights, lengths=lengths, reverse=reverse, candidate=candidate)
    states = list(state) if isinstance(state, tuple) else [state]
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)).sum()
               for t in [out, *states])
    grads = torch.autograd.grad(loss, leaves)
    return [out.detach(), *[s.detach() for s in states]], list(grads)


def assert_close_lists(got, want, atol, what):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"{what}[{i}]: shape {a.shape} != {b.shape}"
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{what}[{i}]: {m}")
