"""The batch's blocks started from compiled code (common.run_rows with a family's or a GEMM's
launcher, region.team_rows) give the bits of the same blocks started as Python callbacks
(team.run_blocks), for every family's forward and backward, the backward's GEMMs and the inference
projection; and they do run where region.usable says so. A launcher calls its rows function through
its address (region.call_unlinked): it does not compile that function's code again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

import grukit.nn as gnn
from grukit.nn.kernels import api, backward_gemms, common, gru, lstm, mgu, mingru, region, rnn

pytestmark = pytest.mark.skipif(not region.usable(), reason="needs torch's libgomp on x86 (region.usable)")

LAYERS = {"GRU": gnn.GRU, "GRU reset before": lambda *a, **k: gnn.GRU(*a, reset_after=False, **k),
          "LSTM": gnn.LSTM, "RNN": gnn.RNN, "MGU": gnn.MGU, "MinGRU": gnn.MinGRU}


def _training_and_inference(layer, x, target):
    layer.zero_grad(set_to_none=True)
    out, _ = layer(x)
    torch.nn.functional.mse_loss(out[:, -1], target).backward()
    with torch.no_grad():
        inferred, _ = layer(x)
    return [out.detach(), inferred, *(p.grad for p in layer.parameters())]


@pytest.fixture
def counted_launches(monkeypatch):
    """How many regions were started from Python callbacks and how many from compiled code."""
    counts = {"python": 0, "compiled": 0}
    run_blocks = common.run_blocks

    def counted(block, count):
        counts["python"] += 1
        return run_blocks(block, count)
    monkeypatch.setattr(common, "run_blocks", counted)
    team_rows_calls = common.run_rows

    def run_rows(rows_fn, batch, work, args, min_work=common.MIN_PARALLEL_WORK, in_team=None):
        if (in_team is not None and region.usable()
                and common.chunk_bounds(batch, work, min_work) is not None):
            counts["compiled"] += 1
        return team_rows_calls(rows_fn, batch, work, args, min_work, in_team)
    for module in (common, backward_gemms, api, gru, lstm, mgu, mingru, rnn):
        monkeypatch.setattr(module, "run_rows", run_rows)
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("input_size", [6, 40], ids=["projected in the loop", "projected before"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_compiled_launches_give_the_bits_of_python_callbacks(name, input_size, dtype, monkeypatch):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    layer = LAYERS[name](input_size, 64, batch_first=True).to(dtype)
    x = torch.randn(64, 30, input_size, dtype=dtype)
    target = torch.randn(64, 64, dtype=dtype)
    compiled = _training_and_inference(layer, x, target)
    with monkeypatch.context() as patch:
        patch.setattr(region, "usable", lambda: False)
        callbacks = _training_and_inference(layer, x, target)
    for index, (a, b) in enumerate(zip(compiled, callbacks)):
        assert torch.equal(a, b), f"{name}: result {index} differs between the two ways of starting the blocks"


def test_the_compiled_launchers_run_where_the_team_is_usable(counted_launches, monkeypatch):
    torch.set_num_threads(2)
    layer = gnn.LSTM(10, 64, batch_first=True)
    x = torch.randn(64, 50, 10)
    # the weight gradients' GEMM is a region of its own only where the microkernel is the faster GEMM
    # (AVX-512 Zen); elsewhere torch's matmul forms it
    gemm = int(backward_gemms.TRANSPOSED_USABLE)
    layer(x)[0][:, -1].sum().backward()
    # the forward, the backward (and the weight gradients' GEMM): regions, none from Python
    assert counted_launches == {"python": 0, "compiled": 2 + gemm}
    layer.double()(x.double())[0][:, -1].sum().backward()   # float64: its weight gradients on torch
    assert counted_launches == {"python": 0, "compiled": 4 + gemm}
    monkeypatch.setattr(region, "usable", lambda: False)
    layer.float()(x)[0][:, -1].sum().backward()
    assert counted_launches == {"python": 2 + gemm, "compiled": 4 + gemm}


def test_a_launcher_calls_its_rows_function_without_compiling_it_again():
    """A launcher freshly compiled (no cache) declares its rows function's registered symbol and
    defines none of the rows function's code: linked or inlined, that code was optimized again in
    every library above it, two to three times the rows function's own compile time."""
    torch.set_num_threads(2)
    layer = gnn.LSTM(10, 64, batch_first=True)
    layer(torch.randn(64, 50, 10))[0][:, -1].sum().backward()   # compiles or loads both launchers
    for launcher, rows in ((lstm._fwd_in_team, "_fwd_rows"), (lstm._bwd_in_team, "_bwd_rows")):
        fresh = njit(nogil=True)(launcher.py_func)
        signature = launcher.signatures[0]
        fresh.compile(signature)
        ir = fresh.inspect_llvm(signature)
        assert f"declare i32 @\"grukit_unlinked.grukit.nn.kernels.lstm.{rows}(" in ir
        defined = [line for line in ir.splitlines() if line.startswith("define") and rows in line]
        assert not defined, f"{rows}'s code is compiled into its launcher: {defined[0][:200]}"


def test_each_gemm_launcher_gives_the_callbacks_bits(monkeypatch):
    """Every path of backward_gemms (row tiles, column tiles, sum parts, the plain product) and the
    inference projection's rows, started both ways."""
    rng = np.random.default_rng(0)
    cases = [lambda: backward_gemms.transposed_product(rng.standard_normal((3000, 200)).astype(np.float32),
                                                       rng.standard_normal((3000, 70)).astype(np.float32)),
             lambda: backward_gemms.transposed_product(rng.standard_normal((400, 300)).astype(np.float32),
                                                       rng.standard_normal((400, 40)).astype(np.float32)),
             lambda: backward_gemms.transposed_product(rng.standard_normal((3000, 256)).astype(np.float32),
                                                       rng.standard_normal((3000, 64)).astype(np.float32))]
    if not backward_gemms.TRANSPOSED_USABLE:
        cases = []
    if backward_gemms.USABLE:
        cases.append(lambda: backward_gemms.product(rng.standard_normal((3000, 200)).astype(np.float32),
                                                    rng.standard_normal((200, 64)).astype(np.float32)))
    torch.set_num_threads(2)
    for case in cases:
        state = rng.bit_generator.state
        compiled = case()
        rng.bit_generator.state = state
        with monkeypatch.context() as patch:
            patch.setattr(region, "usable", lambda: False)
            callbacks = case()
        assert np.array_equal(compiled, callbacks)
    rows = rng.standard_normal((4000, 32)).astype(np.float32)
    w_ih, b_ih = rng.standard_normal((96, 32)).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    out = np.empty((4000, 96), np.float32)
    api.project_into(rows, w_ih, b_ih, out)
    with monkeypatch.context() as patch:
        patch.setattr(region, "usable", lambda: False)
        again = np.empty_like(out)
        api.project_into(rows, w_ih, b_ih, again)
    assert np.array_equal(out, again)
    np.testing.assert_allclose(out, rows.astype(np.float64) @ w_ih.T.astype(np.float64) + b_ih, rtol=1e-4, atol=1e-4)


@njit(nogil=True)
def _rows_raising_from(r0, r1, first_bad, out):
    for r in range(r0, r1):
        if r >= first_bad:
            raise ValueError("bad row")
        out[r] = r


@njit(nogil=True)
def _raising_in_team(bounds, blas_limit, args):
    return region.team_rows(_rows_raising_from, bounds, blas_limit, args)


def test_a_block_that_raises_makes_the_launcher_return_1_and_the_others_finish():
    torch.set_num_threads(2)
    torch.ones(1000).sum()    # torch's team started in this process
    bounds = np.array([0, 50, 100], np.int64)
    out = np.full(100, -1, np.int64)
    assert _raising_in_team(bounds, np.bool_(True), (np.int64(60), out)) == 1
    assert (out[:50] == np.arange(50)).all(), "the block that did not raise ran to its end"
    assert _raising_in_team(bounds, np.bool_(True), (np.int64(100), out)) == 0
    assert (out == np.arange(100)).all()
    with pytest.raises(RuntimeError, match="a block raised inside the parallel region"):
        common.run_rows(_rows_raising_from, 100, 10 ** 9, (np.int64(60), out), in_team=_raising_in_team)
