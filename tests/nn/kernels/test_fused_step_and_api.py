"""fused_step, the minGRU scan, supports(), the call counter and the numpy entry points."""

from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import grukit.nn as gnn
from grukit.errors import DataError, UnsupportedKernelConfig
from grukit.nn import kernels
from grukit.nn.kernels import api, function
from grukit.nn.kernels.function import fused_run_direction, fused_step, supports
from grukit.nn.reference import DirectionWeights, mingru_parallel_scan, run_direction, step
from kernel_cases import MODES, make_case


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("mode", MODES)
def test_fused_step_matches_reference_step(mode, dtype, atol):
    for candidate in (("identity", "g") if mode == "MINGRU" else ("identity",)):
        gx, state0, weights, _, _ = make_case(mode, 1, 3, 5, dtype=dtype, seed=11)
        with torch.no_grad():
            want = step(mode, gx[0], state0, weights, candidate)
            got = state0
            for _ in range(2):  # the second call reuses the packed weight
                got = fused_step(mode, gx[0], state0, weights, candidate)
        want, got = (list(x) if isinstance(x, tuple) else [x] for x in (want, got))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_packed_weight_follows_in_place_updates():
    gx, h0, weights, _, _ = make_case("GRU", 1, 2, 4, seed=5)
    with torch.no_grad():
        fused_step("GRU", gx[0], h0, weights)
        weights.weight_hh.mul_(-2.0)
        torch.testing.assert_close(fused_step("GRU", gx[0], h0, weights),
                                   step("GRU", gx[0], h0, weights), atol=1e-12, rtol=0)


@pytest.mark.parametrize("candidate", ["identity", "g"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_mingru_against_parallel_scan(candidate, reverse, ragged):
    gx, h0, weights, lengths, leaves = make_case("MINGRU", 7, 4, 5, ragged=ragged, seed=2)
    out, h_n = fused_run_direction("MINGRU", gx, h0, weights, lengths, reverse, candidate)
    want_out, want_h = mingru_parallel_scan(gx, h0, lengths, reverse, candidate)
    torch.testing.assert_close(out, want_out, atol=1e-9, rtol=0)
    torch.testing.assert_close(h_n, want_h, atol=1e-9, rtol=0)
    cot = torch.randn_like(out)
    got = torch.autograd.grad((out * cot).sum() + h_n.sum(), leaves)
    want = torch.autograd.grad((want_out * cot).sum() + want_h.sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


def test_supports_reasons():
    w = torch.zeros(12, 4)
    assert supports("GRU", torch.float32, "cpu", DirectionWeights(w)) is None
    assert supports("MINGRU", torch.float64, "cpu", DirectionWeights(None)) is None
    assert "float16" in supports("GRU", torch.float16, "cpu", DirectionWeights(w))
    assert "cpu" in supports("GRU", torch.float32, "meta", DirectionWeights(w)).lower()
    lstm = DirectionWeights(torch.zeros(16, 2), None, torch.zeros(2, 4))
    assert "projection" in supports("LSTM", torch.float32, "cpu", lstm)
    assert "weight_hh" in supports("GRU", torch.float32, "cpu", DirectionWeights(None))
    assert supports("GRU", torch.float64, "cpu", DirectionWeights(w)) is not None  # dtype mismatch
    assert "unknown" in supports("NOPE", torch.float32, "cpu")


def test_unsupported_configuration_raises():
    gx = torch.zeros(2, 1, 16)
    lstm = DirectionWeights(torch.zeros(16, 2), None, torch.zeros(2, 4))
    with pytest.raises(UnsupportedKernelConfig, match="projection"):
        fused_run_direction("LSTM", gx, (torch.zeros(1, 2), torch.zeros(1, 4)), lstm)


def test_lengths_out_of_range_raise():
    gx, h0, weights, _, _ = make_case("GRU", 3, 2, 2)
    with pytest.raises(DataError, match="lengths"):
        fused_run_direction("GRU", gx, h0, weights, torch.tensor([3, 4]))


def test_backward_twice_with_retain_graph():
    gx, h0, weights, lengths, leaves = make_case("LSTM", 4, 2, 3, ragged=True)
    out, (h_n, c_n) = fused_run_direction("LSTM", gx, h0, weights, lengths)
    loss = out.sum() + h_n.sum() + c_n.sum()
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_call_counter_proves_the_kernel_ran():
    gx, h0, weights, _, _ = make_case("RNN_TANH", 3, 2, 2)
    before = dict(function.CALLS)
    out, h_n = fused_run_direction("RNN_TANH", gx, h0, weights)
    (out.sum() + h_n.sum()).backward()
    with torch.no_grad():
        fused_step("RNN_TANH", gx[0], h0, weights)
    assert function.CALLS["run"] == before.get("run", 0) + 1
    assert function.CALLS["backward"] == before.get("backward", 0) + 1
    assert function.CALLS["step"] == before.get("step", 0) + 1


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_project_equals_numpy_in_both_layouts(dtype, atol, threads):
    """api.project (the inference input projection on the kernels' threads) against numpy, for
    the whole batch in one block, per-thread blocks of rows, chunks of rows within a block,
    batch-first input (api.project_batch_first: a table of rows and its index) and no bias."""
    from grukit.nn.kernels import common
    rng = np.random.default_rng(3)
    old = common.get_threads()
    try:
        common.set_threads(threads)
        # the third goes parallel; the last two take several of project_rows' chunks of rows
        for T, B, I, G in ((4, 1, 3, 6), (9, 5, 7, 12), (300, 8, 40, 96), (900, 2, 8, 96)):
            x = rng.standard_normal((T, B, I)).astype(dtype)
            w = rng.standard_normal((G, I)).astype(dtype)
            b = rng.standard_normal(G).astype(dtype)
            want = x @ w.T + b
            np.testing.assert_allclose(api.project(x, w, b), want, atol=atol, rtol=0)
            batch_first = np.ascontiguousarray(x.transpose(1, 0, 2))
            table, index = api.project_batch_first(batch_first, w, b)
            assert table.shape == (B * T, G) and index.shape == (T, B)
            np.testing.assert_allclose(table[index], want, atol=atol, rtol=0)
            np.testing.assert_allclose(api.project(x, w), x @ w.T, atol=atol, rtol=0)
    finally:
        common.set_threads(old)
    with pytest.raises(ValueError, match="w_ih"):
        api.project(x, w[:, :-1].copy(), b)
    with pytest.raises(ValueError, match="w_ih"):
        api.project_batch_first(x, w[:, :-1].copy(), b)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("layer_type,options", [
    (gnn.GRU, {}), (gnn.GRU, {"bidirectional": True, "num_layers": 2}), (gnn.LSTM, {}),
    (gnn.RNN, {"bias": False}), (gnn.MinGRU, {}), (gnn.MGU, {"variant": "mgu1"})])
def test_inference_projects_on_the_kernels_threads(layer_type, options, batch_first):
    """Under no_grad the fused path projects the input itself (counted) with the numbers of
    the reference path; MGU1-3 (no single projection) and recording autograd keep torch's GEMM."""
    torch.manual_seed(0)
    layer = layer_type(6, 5, batch_first=batch_first, **options).double()
    x = torch.randn(3, 40, 6, dtype=torch.float64)    # (N, T, I)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    lengths = torch.tensor([40, 17, 1])
    single = options.get("variant") not in ("mgu1", "mgu2", "mgu3")
    layer.kernel = "reference"
    with torch.no_grad():
        want = layer(x, lengths=lengths)
    layer.kernel = "auto"
    before = function.CALLS["project"]
    with torch.no_grad():
        got = layer(x, lengths=lengths)
    assert function.CALLS["project"] - before == (layer.num_layers * layer.num_directions if single else 0)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    before = function.CALLS["project"]
    layer(x, lengths=lengths)[0].sum().backward()            # autograd records: torch projects
    assert function.CALLS["project"] == before
    with torch.no_grad():
        layer(x[:1] if batch_first else x[:, :1])              # a batch of one is projected here too
    assert function.CALLS["project"] - before == (layer.num_layers * layer.num_directions if single else 0)


def test_threads_follow_torch():
    from grukit.nn.kernels import common
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        gx, h0, weights, _, _ = make_case("GRU", 2, 2, 2)
        fused_run_direction("GRU", gx, h0, weights)
        assert common.get_threads() == 1
        assert common.chunk_bounds(64, 10 ** 9) is None
    finally:
        torch.set_num_threads(old)
    fused_run_direction("GRU", gx, h0, weights)
    assert common.get_threads() == min(old, common._MAX_THREADS)


def test_numpy_api_without_torch_tensors():
    """The numpy entry points alone (what a torch-free runtime calls) reproduce the oracle."""
    gx, h0, weights, lengths, _ = make_case("GRU", 5, 3, 4, ragged=True)
    want_out, want_h = run_direction("GRU", gx, h0, weights, lengths, reverse=True)
    w = weights.weight_hh.detach().numpy()
    out, h_n, _, _ = api.forward("GRU", gx.detach().numpy(), h0.detach().numpy(),
                                 w_t=api.pack_weight(w), bias_hh=weights.bias_hh.detach().numpy(),
                                 lengths=lengths.numpy(), reverse=True)
    np.testing.assert_allclose(out, want_out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(h_n, want_h.detach().numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="packed weight_hh"):
        api.forward("GRU", gx.detach().numpy(), h0.detach().numpy(), w_t=w[:4])


def test_kernel_modules_import_numpy_and_numba_only():
    folder = Path(kernels.__file__).parent
    for path in sorted(folder.glob("*.py")):
        if path.name == "function.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            for name in names:
                assert name.split(".")[0] in {"numpy", "numba", "llvmlite", "math", "os", "platform", "threading", "concurrent", "__future__",
                                                "contextlib", "ctypes", "functools", "importlib", "scipy", "sys", "typing"}, (path.name, name)


@pytest.mark.parametrize("make", [
    lambda: gnn.GRU(4, 8, kernel="fused"),                      # flushed inside the gate loop
    lambda: gnn.GRU(4, 8, kernel="fused", reset_after=False),
    lambda: gnn.LSTM(4, 8, kernel="fused"),
    lambda: gnn.RNN(4, 8, kernel="fused"),                      # flushed after the kernel
    lambda: gnn.MGU(4, 8, kernel="fused"),
], ids=["gru", "gru-reset-before", "lstm", "rnn", "mgu"])
def test_backward_flushes_subnormals_without_changing_results(make):
    """Loss on the last step: gradients shrink towards t = 0 and would be subnormal in float32.
    The kernels flush them (FTZ/DAZ) and restore the caller's floating-point mode afterwards."""
    import numpy as np
    from grukit.nn.kernels import common
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.weight_hh_l0.mul_(0.01)  # tiny recurrent weights: gradients vanish fast through time
        layer.weight_ih_l0.mul_(0.01)
    x = torch.randn(300, 2, 4, requires_grad=True)
    out, _ = layer(x)
    out[-1].sum().backward()
    grad = x.grad.numpy()
    tiny = np.finfo(np.float32).tiny
    assert not np.any((grad != 0) & (np.abs(grad) < tiny)), "subnormal gradients escaped the kernel"
    assert grad[-1].any() and not grad[0].any()  # the early steps' gradients flushed to exactly zero
    for name, parameter in layer.named_parameters():
        g = parameter.grad.numpy()
        assert np.isfinite(g).all() and not np.any((g != 0) & (np.abs(g) < tiny)), name
    if common._X86:
        before = common._enter_flush_to_zero()
        common._restore_fp_mode(before)
        assert not before & common._FTZ_DAZ, "the caller's floating-point mode was not restored"


@pytest.mark.parametrize("update", ["data", "fused_adam"])
def test_weights_updated_without_a_version_bump_are_seen(update):
    """torch's fused Adam and writes through .data change parameters without bumping their
    _version; the fused path must still run with the current weights (a stale packed copy
    once made the IMDB tutorial diverge)."""
    torch.manual_seed(0)
    fused = gnn.GRU(3, 5, kernel="fused")
    reference = gnn.GRU(3, 5, kernel="reference")
    x = torch.randn(4, 2, 3)
    fused(x)  # packs the weights once
    if update == "data":
        fused.weight_hh_l0.data.mul_(-2.0)
    else:
        for p in fused.parameters():
            p.grad = torch.ones_like(p)
        torch.optim.Adam(fused.parameters(), lr=0.5, fused=True).step()
    reference.load_state_dict(fused.state_dict())
    torch.testing.assert_close(fused(x)[0], reference(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU"])
def test_rnn_backward_reads_the_output_and_guards_it(mode):
    """The RNN keeps no workspace: backward reads its output and h0 (saved tensors), so an
    in-place change to either before backward raises instead of giving wrong gradients."""
    gx, h0, weights, lengths, leaves = make_case(mode, 6, 3, 4, ragged=True, seed=8)
    out, h_n = fused_run_direction(mode, gx, h0, weights, lengths, reverse=True)
    out.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    h0 = h0.detach().clone()
    out, h_n = fused_run_direction(mode, gx, h0, weights, lengths)
    h0.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (out.sum() + h_n.sum()).backward()


def reversed_training_forward(mode, seed=0):
    """A ragged batch (T=6, B=3, H=4) through api.forward in reverse, training: (gx, weight_hh as
    stored, lengths, (out, h_n, c_n, workspace)) as numpy arrays."""
    gx, state0, weights, lengths, _ = make_case(mode, 6, 3, 4, ragged=True, seed=seed)
    h0, c0 = (t.detach().numpy() for t in state0) if mode == "LSTM" else (state0.detach().numpy(), None)
    w = None if weights.weight_hh is None else weights.weight_hh.detach().numpy()
    bias = None if weights.bias_hh is None else weights.bias_hh.detach().numpy()
    gx, lengths = gx.detach().numpy(), lengths.numpy()
    return gx, w, lengths, api.forward(mode, gx, h0, c0, None if w is None else api.pack_weight(w), bias, lengths,
                                       reverse=True, training=True)


@pytest.mark.parametrize("mode", MODES)
def test_one_zero_row_stands_for_an_unused_output_sequences_gradient(mode):
    """api.backward with grad_out (1, 1, H) zeros gives the same bits as with (T, B, H) zeros,
    and any other shape is refused."""
    gx, w, lengths, (out, h_n, c_n, ws) = reversed_training_forward(mode)
    grad_h_n = np.random.default_rng(0).standard_normal(h_n.shape)
    grad_c_n = None if c_n is None else np.ones_like(c_n)
    full, row = (api.backward(mode, ws, gx, w, np.zeros(shape), grad_h_n, grad_c_n, lengths, True)
                 for shape in (out.shape, (1, 1, out.shape[2])))
    for a, b in zip(full[:3], row[:3]):
        assert (a is None and b is None) or np.array_equal(a, b)
    with pytest.raises(ValueError, match="unused output"):
        api.backward(mode, ws, gx, w, np.zeros((1, 2, out.shape[2])), grad_h_n, grad_c_n, lengths, True)


@pytest.mark.parametrize("mode", [m for m in MODES if m in api.BIAS_SOURCE_IS_GATES + ("GRU",)])
def test_the_gate_sums_are_the_gate_gradients_summed_over_every_row(mode):
    """api.gate_sums (an input-side bias's gradient) is grad_gx summed over steps and sequences, and
    the bias source's bias_hh part (api.bias_hh_source) sums to what torch's autograd gives bias_hh
    in the reference loop (GRU: (dr, dz, dn * r), where the gate sums have dn)."""
    gx, w, lengths, (out, h_n, c_n, ws) = reversed_training_forward(mode, seed=5)
    rng = np.random.default_rng(3)
    grad_out, grad_h_n = rng.standard_normal(out.shape), rng.standard_normal(h_n.shape)
    grad_c_n = None if c_n is None else rng.standard_normal(c_n.shape)
    dgx, _, _, _, bias_src = api.backward(mode, ws, gx, w, grad_out, grad_h_n, grad_c_n, lengths, True)
    np.testing.assert_allclose(api.gate_sums(mode, bias_src), dgx.sum((0, 1)), rtol=0, atol=1e-12)
    gx_t, state0, weights, lengths_t, _ = make_case(mode, 6, 3, 4, ragged=True, seed=5)
    bias_hh = weights.bias_hh.detach().clone().requires_grad_(True)
    results = run_direction(mode, gx_t, state0, dataclasses.replace(weights, bias_hh=bias_hh), lengths_t, reverse=True)
    grads = [torch.from_numpy(grad_out), torch.from_numpy(grad_h_n)]
    if grad_c_n is not None:
        grads.append(torch.from_numpy(grad_c_n))
    outputs = [results[0], *(results[1] if isinstance(results[1], tuple) else (results[1],))]
    (expected,) = torch.autograd.grad(outputs, bias_hh, grads)
    np.testing.assert_allclose(api.bias_grad(api.bias_hh_source(mode, bias_src)), expected.numpy(), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_first_output_gradient_is_read_in_place(mode):
    """api.backward on a (B, T, H) grad_out with grad_out_batch_first gives the same bits as on
    its time-major copy; the time-major shape is then refused."""
    gx, w, lengths, (out, h_n, c_n, ws) = reversed_training_forward(mode, seed=4)
    rng = np.random.default_rng(2)
    batch_first = rng.standard_normal((out.shape[1], out.shape[0], out.shape[2]))
    grad_h_n = rng.standard_normal(h_n.shape)
    grad_c_n = None if c_n is None else np.ones_like(c_n)
    in_place = api.backward(mode, ws, gx, w, batch_first, grad_h_n, grad_c_n, lengths, True,
                            grad_out_batch_first=True)
    copied = api.backward(mode, ws, gx, w, np.ascontiguousarray(batch_first.transpose(1, 0, 2)), grad_h_n,
                          grad_c_n, lengths, True)
    flat = [list(_leaves(g)) for g in (in_place, copied)]
    assert len(flat[0]) == len(flat[1]) and all(
        (x is None and y is None) or np.array_equal(x, y) for x, y in zip(*flat))
    with pytest.raises(ValueError, match=r"\(batch-first\)"):
        api.backward(mode, ws, gx, w, out, grad_h_n, grad_c_n, lengths, True, grad_out_batch_first=True)


@pytest.mark.parametrize("make", [lambda: gnn.GRU(3, 4, batch_first=True, dtype=torch.float64),
                                  lambda: gnn.LSTM(3, 4, batch_first=True, dtype=torch.float64),
                                  lambda: gnn.MinGRU(3, 4, batch_first=True, num_layers=2, dtype=torch.float64)],
                         ids=["gru", "lstm", "mingru-2-layers"])
def test_batch_first_layers_hand_the_kernels_their_output_gradient_as_it_is(make, monkeypatch):
    """Training a batch-first layer with a loss on its whole output sequence: the kernels get the
    last layer's (B, T, H) output gradient in place (a spy on api.backward; autograd runs the last
    layer first, and the layers below get time-major gradients), and every gradient equals the
    reference loop's."""
    torch.manual_seed(0)
    layer = make()
    reference = copy.deepcopy(layer)
    reference.kernel = "reference"
    seen = []
    real = api.backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("grad_out_batch_first", args[10] if len(args) > 10 else False))
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "backward", spy)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    weights = torch.randn(3, 5, layer.hidden_size, dtype=torch.float64)
    for model in (layer, reference):
        (model(x)[0] * weights).sum().backward()
    assert seen[0] is True and seen[1:] == [False] * (layer.num_layers - 1), seen
    for (name, ours), theirs in zip(layer.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
def test_a_table_read_through_an_index_equals_the_gathered_rows(mode, reverse):
    """api.forward(gx=table, gx_index=index) gives the same bits as gx = table[index]: outputs,
    states, and every gradient backward computes from its workspace. An index outside the table
    is refused."""
    T, B, H = 6, 3, 4
    _, state0, weights, lengths, _ = make_case(mode, T, B, H, ragged=True)
    rng = np.random.default_rng(1)
    table = rng.standard_normal((5, api.GATES[mode] * H))
    index = rng.integers(0, len(table), (T, B))
    index[:2, 0] = 3                       # a row read at several positions
    h0, c0 = (t.detach().numpy() for t in state0) if mode == "LSTM" else (state0.detach().numpy(), None)
    w_t = None if weights.weight_hh is None else api.pack_weight(weights.weight_hh.detach().numpy())
    bias = None if weights.bias_hh is None else weights.bias_hh.detach().numpy()
    args = (h0, c0, w_t, bias, lengths.numpy(), reverse, True)
    indexed = api.forward(mode, table, *args, gx_index=index)
    gathered = api.forward(mode, table[index], *args)
    assert np.array_equal(indexed[0], gathered[0]) and np.array_equal(indexed[1], gathered[1])
    assert indexed[2] is None or np.array_equal(indexed[2], gathered[2])
    w = None if weights.weight_hh is None else weights.weight_hh.detach().numpy()
    grad_out = rng.standard_normal(gathered[0].shape)
    grads = [api.backward(mode, result[3], table[index], w, grad_out,
                          np.ones_like(result[1]), None if c0 is None else np.ones_like(c0), lengths.numpy(), reverse)
             for result in (indexed, gathered)]
    flat = [list(_leaves(g)) for g in grads]    # the weight-gradient terms are lists of tuples
    assert len(flat[0]) == len(flat[1]) and all(
        (x is None and y is None) or np.array_equal(x, y) for x, y in zip(*flat))
    with pytest.raises(ValueError, match="rows of the"):
        api.forward(mode, table, *args, gx_index=index + 2)
    with pytest.raises(ValueError, match="table"):
        api.forward(mode, table[index], *args, gx_index=index)


def _leaves(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value
