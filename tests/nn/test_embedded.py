"""``layer(tokens, embedding=E)`` (grukit.nn.embedded): the first layer's projection through the
distinct tokens must equal ``layer(E[tokens])``, outputs, states and every gradient, E's included."""

import numpy as np
import pytest
import torch

from grukit.errors import ConfigError, DataError, ShapeError
from grukit.nn import embedded
from grukit.nn.kernels.rows import add_rows

from test_layers import KINDS, I, build

V = 11


def _loss(out, state):
    states = state if isinstance(state, tuple) else (state,)
    return out.sin().sum() + sum((s * s).sum() for s in states)


def _values_and_gradients(layer, tokens, weight, lengths, fused):
    for parameter in [*layer.parameters(), weight]:
        parameter.grad = None
    if fused:
        out, state = layer(tokens, lengths=lengths, embedding=weight)
    else:
        out, state = layer(torch.nn.functional.embedding(tokens, weight), lengths=lengths)
    _loss(out, state).backward()
    states = state if isinstance(state, tuple) else (state,)
    return [out.detach(), *[s.detach() for s in states], weight.grad,
            *[p.grad for p in layer.parameters()]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel", ["auto", "reference"])
@pytest.mark.parametrize("bidirectional,batch_first,padded", [
    (False, False, False), (True, True, True), (False, True, True), (True, False, False)])
def test_equals_the_layer_on_looked_up_vectors(kind, kernel, bidirectional, batch_first, padded):
    torch.manual_seed(0)
    layer = build(kind, num_layers=2, bidirectional=bidirectional, batch_first=batch_first, kernel=kernel)
    weight = torch.randn(V, I, dtype=torch.float64, requires_grad=True)
    shape = (4, 9) if batch_first else (9, 4)
    tokens = torch.randint(0, V, shape)
    tokens.view(-1)[:3] = 5   # a repeated token: its gradient sums over positions
    lengths = torch.tensor([9, 3, 6, 1]) if padded else None
    ours = _values_and_gradients(layer, tokens, weight, lengths, fused=True)
    theirs = _values_and_gradients(layer, tokens, weight, lengths, fused=False)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_the_distinct_token_projection_runs_and_matches_in_float32(monkeypatch):
    calls = []
    original = embedded._DistinctTokenProjection.apply
    monkeypatch.setattr(embedded._DistinctTokenProjection, "apply", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(1)
    layer = build("gru", batch_first=True).float()
    weight = torch.randn(V, I, requires_grad=True)
    tokens = torch.randint(0, V, (5, 30))
    ours = _values_and_gradients(layer, tokens, weight, None, fused=True)
    assert calls == [1]
    theirs = _values_and_gradients(layer, tokens, weight, None, fused=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_embedding_gets_no_gradient_and_unbatched_tokens_work():
    torch.manual_seed(2)
    layer = build("lstm")
    weight = torch.randn(V, I, dtype=torch.float64)
    tokens = torch.randint(0, V, (7,))
    out, (h, c) = layer(tokens, embedding=weight)
    expected, (h_expected, c_expected) = layer(torch.nn.functional.embedding(tokens, weight))
    assert out.shape == (7, 4) and h.shape == (1, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_expected, rtol=0, atol=1e-12)
    out.sum().backward()
    assert weight.grad is None and layer.weight_ih_l0.grad is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_inference_projects_the_distinct_tokens_in_the_single_call_path(kind, kernel, monkeypatch):
    from grukit.nn.kernels import function
    single_calls, projections = [], []
    original_inference, original_projection = function.fused_inference, embedded._DistinctTokenProjection.apply
    monkeypatch.setattr(function, "fused_inference", lambda *a: single_calls.append(1) or original_inference(*a))
    monkeypatch.setattr(embedded._DistinctTokenProjection, "apply",
                        lambda *a: projections.append(1) or original_projection(*a))
    gathers, original_gather = [], embedded._GatherRows.apply
    monkeypatch.setattr(embedded._GatherRows, "apply", lambda *a: gathers.append(1) or original_gather(*a))
    torch.manual_seed(3)
    layer = build(kind, num_layers=2, bidirectional=True, batch_first=True, kernel=kernel)
    weight = torch.randn(V, I, dtype=torch.float64)
    tokens = torch.randint(0, V, (3, 8))
    lengths = torch.tensor([8, 2, 5])
    with torch.no_grad():
        ours = layer(tokens, lengths=lengths, embedding=weight)
        theirs = layer(weight[tokens], lengths=lengths)
    for a, b in zip(ours, theirs):
        for x, y in zip(*(t if isinstance(t, tuple) else (t,) for t in (a, b))):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    single_projection = kind not in ("mgu1", "mgu2", "mgu3")
    assert len(projections) == (2 if single_projection else 0)
    assert len(single_calls) == (2 if single_projection and kernel == "auto" else 0)
    # the kernels read the per-token tables through the token index; the reference loop gathers
    assert len(gathers) == (2 if single_projection and kernel == "reference" else 0)


@pytest.mark.parametrize("tokens,weight,error,words", [
    (torch.tensor([[0, V]]), torch.zeros(V, I), DataError, "must lie in [0, 10]"),
    (torch.tensor([[-1, 0]]), torch.zeros(V, I), DataError, "out-of-vocabulary"),
    (torch.zeros(2, 3), torch.zeros(V, I), DataError, "integer token ids"),
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(V, I + 1), ShapeError, f"input_size={I + 1}"),
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(V), ShapeError, "2-D float tensor"),
    (torch.zeros(2, 3, 1, dtype=torch.long), torch.zeros(V, I), ShapeError, "token ids or unbatched"),
])
def test_bad_tokens_or_embedding_name_the_fix(tokens, weight, error, words):
    layer = build("gru", batch_first=True)
    with pytest.raises(error, match=None) as raised:
        layer(tokens, embedding=weight.double())
    assert words in str(raised.value)


def test_packed_tokens_are_refused():
    layer = build("gru")
    packed = torch.nn.utils.rnn.pack_sequence([torch.tensor([1, 2, 3]), torch.tensor([4])])
    with pytest.raises(ConfigError, match="lengths="):
        layer(packed, embedding=torch.zeros(V, I, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_rows_sums_each_target_in_position_order(dtype):
    rng = np.random.default_rng(0)
    index = rng.integers(0, 5, 200)
    source = rng.standard_normal((200, 7)).astype(dtype)
    out = np.ones((5, 7), dtype)
    add_rows(index, source, out)
    expected = np.ones((5, 7), dtype)
    for p, i in enumerate(index):   # a literal loop, the same order of additions
        expected[i] += source[p]
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="index values"):
        add_rows(np.array([5]), source[:1], out)


@pytest.mark.parametrize("kind", KINDS)
def test_the_fused_kernels_read_the_token_table_without_gathering(kind, monkeypatch):
    """On the fused path each direction's kernel reads the per-token table through the token
    index; it gives the same bits as the kernels on the gathered gx (float32, padded, both
    directions), outputs and every gradient. minGRU, whose backward reads gx again, gathers;
    MGU1-3 (gates without input weights) look the vectors up."""
    gathers, tables = [], []
    original_gather = embedded._GatherRows.apply
    monkeypatch.setattr(embedded._GatherRows, "apply", lambda *a: gathers.append(1) or original_gather(*a))
    from grukit.nn.kernels import function
    original_run = function._run_forward
    monkeypatch.setattr(function, "_run_forward",
                        lambda *a: tables.append(a[5] is not None) or original_run(*a))
    torch.manual_seed(3)
    layer = build(kind, bidirectional=True, batch_first=True).float()
    weight = torch.randn(V, I, requires_grad=True)
    tokens = torch.randint(0, V, (4, 9))
    lengths = torch.tensor([9, 3, 6, 1])
    ours = _values_and_gradients(layer, tokens, weight, lengths, fused=True)
    reads_table = kind in ("gru", "gru_reset_before", "lstm", "rnn", "mgu")
    assert tables == [reads_table] * 2 and len(gathers) == (2 if kind.startswith("mingru") else 0)
    original_distinct = embedded.EmbeddedTokens.project_distinct

    def gathered(self, weight_ih, bias):
        table, index = original_distinct(self, weight_ih, bias)
        return original_gather(table, index.reshape(-1)).view(*index.shape, table.shape[1])

    monkeypatch.setattr(embedded.EmbeddedTokens, "project_distinct", gathered)
    theirs = _values_and_gradients(layer, tokens, weight, lengths, fused=True)
    assert tables[2:] == [False] * 2
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
