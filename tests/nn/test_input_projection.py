"""The input projection of all steps in training (recurrent.py, _InputProjection): linear's values
and gradients (narrow inputs take their own order of the weight's gradient), on a kept array."""

import pytest
import torch

import grukit.nn as gnn
from grukit.nn import embedded, projection_grads, recurrent
from grukit.nn.kernels import api, buffers


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False), (False, True, False)])
@pytest.mark.parametrize("width", [1, 7, projection_grads.PAD_COLUMNS, projection_grads.NARROW_INPUT + 1])
def test_projection_gives_linears_values_and_gradients(with_bias, needs, width):
    torch.manual_seed(0)
    rows = torch.randn(300, width, dtype=torch.float64, requires_grad=needs[0])
    weight = torch.randn(24, width, dtype=torch.float64, requires_grad=needs[1])
    bias = torch.randn(24, dtype=torch.float64, requires_grad=needs[2]) if with_bias else None
    upstream = torch.randn(300, 24, dtype=torch.float64)
    inputs = [t for t in (rows, weight, bias) if t is not None and t.requires_grad]
    ours = recurrent._InputProjection.apply(rows, weight, bias)
    theirs = torch.nn.functional.linear(rows, weight, bias)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(theirs, inputs, upstream)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(recurrent._InputProjection.apply, (rows[:5], weight[:, :], bias))


@pytest.mark.parametrize("input_size,kernel", [(10, "reference"), (api.INPUT_ROWS_MAX + 1, "auto"),
                                               (projection_grads.NARROW_INPUT + 1, "reference")])
def test_layers_use_it_in_training_only(input_size, kernel, monkeypatch):
    """Narrow inputs on the fused kernels are projected inside the loop instead (test_input_rows.py)."""
    calls = []
    original = recurrent._InputProjection.apply
    monkeypatch.setattr(recurrent._InputProjection, "apply", lambda *a: calls.append(1) or original(*a))
    layer = gnn.LSTM(input_size, 8, kernel=kernel)
    x = torch.randn(5, 3, input_size)
    layer(x)[0].sum().backward()
    assert calls
    calls.clear()
    with torch.no_grad():
        layer(x)
    assert not calls


def test_a_step_reuses_the_kept_output_of_the_step_before():
    """The projection's output is a kept array: freed with the step's graph, it serves the next step,
    and an output still held is never handed out again."""
    torch.manual_seed(0)
    rows = torch.randn(2000, 10, requires_grad=True)   # 2000 x 256 float32: above buffers.MIN_BYTES
    weight = torch.randn(256, 10, requires_grad=True)
    first = recurrent._InputProjection.apply(rows, weight, None)
    held = recurrent._InputProjection.apply(rows, weight, None)
    assert first.data_ptr() != held.data_ptr()
    address = first.data_ptr()
    del first
    again = recurrent._InputProjection.apply(rows, weight, None)
    assert again.data_ptr() == address
    torch.testing.assert_close(again, held, rtol=0, atol=0)


@pytest.mark.parametrize("width", [4, api.INPUT_ROWS_MAX + 1])
def test_a_batch_first_input_is_copied_to_time_major_rows_in_a_kept_array(width, monkeypatch):
    """Training a batch-first layer: the transposed input becomes time-major rows in a kept array
    (embedded.time_major_rows), for the projection of all steps (width INPUT_ROWS_MAX + 1) or, where
    the fused loop projects each step's rows itself (width 4), for its backward's grad weight_ih on
    torch's matmul, as in float64 (a fresh copy there had cost 800 page faults a step at S2; in float32
    oneDNN's microkernel reads x in place, test_backward_gemms); the input's gradient flows back through
    it. The oracle is torch.nn.GRU."""
    kept = []
    original = embedded.kept_empty
    monkeypatch.setattr(embedded, "kept_empty", lambda shape, like: kept.append(shape) or original(shape, like))
    torch.manual_seed(0)
    fused = gnn.GRU(width, 16, batch_first=True, dtype=torch.float64)
    theirs = torch.nn.GRU(width, 16, batch_first=True, dtype=torch.float64)
    theirs.load_state_dict(fused.state_dict())
    steps = buffers.MIN_BYTES // (8 * width * 8) + 1   # x (8, steps, width) float64: a kept array's size
    x = torch.randn(8, steps, width, dtype=torch.float64, requires_grad=True)
    x_theirs = x.detach().clone().requires_grad_(True)
    ours_out = fused(x)[0]
    theirs_out = theirs(x_theirs)[0]
    torch.testing.assert_close(ours_out, theirs_out, rtol=0, atol=1e-12)
    ours_out[:, -1].sum().backward()
    theirs_out[:, -1].sum().backward()
    assert kept.count((steps, 8, width)) == 1
    torch.testing.assert_close(x.grad, x_theirs.grad, rtol=0, atol=1e-12)
    for a, b in zip(fused.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
