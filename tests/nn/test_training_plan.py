"""The training plan (nn/training_plan.py): layer(x) with gradients recorded, its decisions kept on
the layer, gives the general path's results bit for bit, is made again when the layer changes, and
leaves every other call to the general path."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import grukit.nn as gnn
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.nn import training_plan
from grukit.nn.kernels.function import CALLS

MAKERS = {"GRU": gnn.GRU, "GRU reset before": lambda *a, **k: gnn.GRU(*a, reset_after=False, **k),
          "LSTM": gnn.LSTM, "RNN": gnn.RNN, "RNN relu": lambda *a, **k: gnn.RNN(*a, nonlinearity="relu", **k),
          "MGU": gnn.MGU, "MinGRU": gnn.MinGRU}
SHAPES = {"one layer, I = 5 (projected in the loop)": dict(input_size=5),
          "one layer, I = 24": dict(input_size=24),
          "two layers, bidirectional, dropout": dict(input_size=5, num_layers=2, bidirectional=True, dropout=0.4)}


def plan_used(layer) -> bool:
    kept = layer.__dict__.get(training_plan.KEPT)
    return kept is not None and kept[1] is not None


def run(layer, x, general: bool, monkeypatch):
    """Output, final state and every gradient of one training call, through the plan or the general path."""
    with monkeypatch.context() as patch:
        if general:
            patch.setattr(training_plan, "kept_plan", lambda *args: None)
        layer.zero_grad(set_to_none=True)
        torch.manual_seed(1)   # the dropout between layers draws the same masks
        out, final = layer(x)
        finals = final if isinstance(final, tuple) else (final,)
        (out.sin().sum() + sum(f.cos().sum() for f in finals)).backward()
    return [out, *finals, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(MAKERS))
def test_the_plan_gives_the_general_paths_bits(name, shape, batch_first, dtype, monkeypatch):
    options = dict(SHAPES[shape])
    input_size = options.pop("input_size")
    layer = MAKERS[name](input_size, 16, batch_first=batch_first, **options).to(dtype)
    x = torch.randn(7, 6, input_size, dtype=dtype)   # (N, L) or (L, N): either way 7 x 6
    runs = CALLS["run"]
    got = run(layer, x, general=False, monkeypatch=monkeypatch)
    assert plan_used(layer), "the call did not take the training plan"
    assert CALLS["run"] == runs + options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1), \
        "the fused kernels did not run"
    want = run(layer, x, general=True, monkeypatch=monkeypatch)
    for index, (a, b) in enumerate(zip(got, want)):
        assert a is not None and b is not None, f"result {index} missing"
        assert torch.equal(a, b), f"{name}: result {index} differs from the general path's"


def test_the_plan_is_made_again_when_a_parameter_is_replaced_or_converted(monkeypatch):
    layer = gnn.GRU(4, 8, batch_first=True)
    x = torch.randn(3, 5, 4)
    run(layer, x, False, monkeypatch)
    first = layer.__dict__[training_plan.KEPT][1]
    layer.weight_hh_l0 = torch.nn.Parameter(torch.randn(24, 8) * 0.1)
    got = run(layer, x, False, monkeypatch)
    assert layer.__dict__[training_plan.KEPT][1] is not first
    assert torch.equal(got[0], run(layer, x, True, monkeypatch)[0])
    assert layer.weight_hh_l0.grad is not None, "the replacing parameter got no gradient"
    layer.double()   # converts in place: the same Parameter objects, another dtype
    got = run(layer, x.double(), False, monkeypatch)
    assert got[0].dtype == torch.float64 and plan_used(layer)
    assert torch.equal(got[0], run(layer, x.double(), True, monkeypatch)[0])
    with pytest.raises(ConfigError, match="float32 but the layer's weights are torch.float64"):
        layer(x)   # the general path names the mismatch


def test_a_deep_copy_trains_its_own_parameters(monkeypatch):
    layer = gnn.LSTM(4, 8)
    x = torch.randn(5, 3, 4)
    run(layer, x, False, monkeypatch)
    twin = copy.deepcopy(layer)
    layer.zero_grad(set_to_none=True)
    twin(x)[0].sum().backward()
    assert all(p.grad is None for p in layer.parameters()), "the copy's call reached the original's parameters"
    assert all(p.grad is not None for p in twin.parameters())
    restored = pickle.loads(pickle.dumps(layer))
    assert training_plan.KEPT not in restored.__dict__


def test_kernel_reference_and_recurrent_dropout_take_no_plan(monkeypatch):
    x = torch.randn(5, 3, 4)
    for layer in (gnn.GRU(4, 8, kernel="reference"), gnn.GRU(4, 8, recurrent_dropout=0.3)):
        runs = CALLS["run"]
        layer(x)[0].sum().backward()
        assert CALLS["run"] == runs and not plan_used(layer)
    layer = gnn.GRU(4, 8)
    layer(x)[0].sum().backward()
    assert plan_used(layer)
    layer.kernel = "reference"
    runs = CALLS["run"]
    layer(x)[0].sum().backward()
    assert CALLS["run"] == runs and not plan_used(layer), "kernel='reference' set later still ran the kernels"


def test_other_calls_take_the_general_path(monkeypatch):
    layer = gnn.GRU(4, 8)
    x = torch.randn(5, 3, 4)
    general = []
    real = training_plan.kept_plan
    monkeypatch.setattr(training_plan, "kept_plan", lambda *args: general.append(1) or real(*args))
    layer(x, torch.zeros(1, 3, 8))
    layer(x, lengths=torch.tensor([5, 4, 2]))
    assert not general, "a call with hx or lengths consulted the plan"
    layer(torch.randn(5, 4))   # unbatched: turned away by the plan's checks
    assert general and not plan_used(layer)
    with torch.no_grad():
        layer(x)
    assert not plan_used(layer)
    with pytest.raises(ShapeError, match="input_size=4"):
        layer(torch.randn(5, 3, 6))
    layer.check_finite = True
    with pytest.raises(DataError, match="NaN"):
        layer(torch.full((5, 3, 4), float("nan")))
