"""The input projection of all steps: narrow inputs take their own backward (recurrent.py,
_NarrowInputProjection), which must give linear's gradients."""

import pytest
import torch

import grukit.nn as gnn
from grukit.nn import recurrent


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False), (False, True, False)])
def test_narrow_projection_gives_linears_values_and_gradients(with_bias, needs):
    torch.manual_seed(0)
    rows = torch.randn(300, 7, dtype=torch.float64, requires_grad=needs[0])
    weight = torch.randn(24, 7, dtype=torch.float64, requires_grad=needs[1])
    bias = torch.randn(24, dtype=torch.float64, requires_grad=needs[2]) if with_bias else None
    upstream = torch.randn(300, 24, dtype=torch.float64)
    inputs = [t for t in (rows, weight, bias) if t is not None and t.requires_grad]
    ours = recurrent._NarrowInputProjection.apply(rows, weight, bias)
    theirs = torch.nn.functional.linear(rows, weight, bias)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(theirs, inputs, upstream)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(recurrent._NarrowInputProjection.apply, (rows[:5], weight[:, :], bias))


@pytest.mark.parametrize("input_size,expected", [(10, True), (recurrent.NARROW_INPUT + 1, False)])
def test_layers_use_it_in_training_for_narrow_inputs_only(input_size, expected, monkeypatch):
    calls = []
    original = recurrent._NarrowInputProjection.apply
    monkeypatch.setattr(recurrent._NarrowInputProjection, "apply", lambda *a: calls.append(1) or original(*a))
    layer = gnn.LSTM(input_size, 8)
    x = torch.randn(5, 3, input_size)
    layer(x)[0].sum().backward()
    assert bool(calls) is expected
    calls.clear()
    with torch.no_grad():
        layer(x)
    assert not calls
