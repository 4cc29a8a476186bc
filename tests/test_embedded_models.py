"""Models where an Embedding feeds a recurrent layer run the pair through ``call_embedded`` (the
first projection once per distinct token): the same outputs and gradients as calling each layer
on its own, which looks the vectors up."""

import pytest
import torch

from grukit import layers as L
from grukit.errors import DataError
from grukit.models import Model, Sequential
from grukit.nn import embedded

VOCABULARY, STEPS = 40, 12


def _tokens(seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCABULARY, (5, STEPS), generator=generator)
    for row, padding in enumerate([0, 3, 7, 11, 0]):   # pre-padding, as pad_sequences does
        tokens[row, :padding] = 0
    tokens[4, 5:9] = 0   # and a hole
    return tokens


def _one_by_one(model, tokens):
    x, mask = tokens, None
    for layer in model.layers:
        x, mask = layer(x, mask)
    return x


def _spy(monkeypatch):
    calls = []
    original = embedded._DistinctTokenProjection.apply
    monkeypatch.setattr(embedded._DistinctTokenProjection, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


def _outputs_and_gradients(model, run, tokens):
    model.zero_grad(set_to_none=True)
    out = run(tokens)
    (out.sin().sum()).backward()
    return [out.detach(), *[p.grad for p in model.parameters() if p.requires_grad]]


STACKS = {
    "gru": lambda: [L.Embedding(VOCABULARY, 6, mask_zero=True), L.GRU(5), L.Dense(1, activation="sigmoid")],
    "gru sequences backwards": lambda: [L.Embedding(VOCABULARY, 6, mask_zero=True),
                                        L.GRU(5, return_sequences=True, go_backwards=True, reset_after=False),
                                        L.GlobalMaxPooling1D(), L.Dense(2)],
    "bidirectional lstm": lambda: [L.Embedding(VOCABULARY, 6, mask_zero=True),
                                   L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="ave"),
                                   L.GlobalAveragePooling1D(), L.Dense(1)],
    "frozen embedding, no mask": lambda: [L.Embedding(VOCABULARY, 6, trainable=False), L.SimpleRNN(4), L.Dense(1)],
    "mgu": lambda: [L.Embedding(VOCABULARY, 6, mask_zero=True), L.MGU(4), L.Dense(1)],
    "mingru stack": lambda: [L.Embedding(VOCABULARY, 6, mask_zero=True), L.MinGRU(4, return_sequences=True),
                             L.GRU(3), L.Dense(1)],
}
DIRECTIONS = {"bidirectional lstm": 2}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_sequential_equals_calling_each_layer(name, monkeypatch):
    torch.manual_seed(0)
    model = Sequential([L.Input((STEPS,)), *STACKS[name]()])
    model.build()
    model.double()
    tokens = _tokens()
    calls = _spy(monkeypatch)
    ours = _outputs_and_gradients(model, model, tokens)
    assert len(calls) == DIRECTIONS.get(name, 1)
    theirs = _outputs_and_gradients(model, lambda t: _one_by_one(model, t), tokens)
    assert len(calls) == DIRECTIONS.get(name, 1)   # the layer-by-layer run looked the vectors up
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_input_dropout_falls_back_to_the_looked_up_vectors_with_the_same_draws(monkeypatch):
    torch.manual_seed(0)
    model = Sequential([L.Input((STEPS,)), L.Embedding(VOCABULARY, 6, mask_zero=True), L.GRU(5, dropout=0.4)])
    model.build()
    calls = _spy(monkeypatch)
    tokens = _tokens()
    torch.manual_seed(1)
    ours = _outputs_and_gradients(model, model, tokens)
    torch.manual_seed(1)
    theirs = _outputs_and_gradients(model, lambda t: _one_by_one(model, t), tokens)
    assert calls == []
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.eval()   # nothing to drop in eval mode: the distinct tokens again
    model(tokens).sum().backward()
    assert calls == [1]


def test_functional_model_pairs_an_embedding_only_with_its_single_reader(monkeypatch):
    torch.manual_seed(0)
    text = L.Input((STEPS,))
    embedding = L.Embedding(VOCABULARY, 6, mask_zero=True)
    gru, dense = L.GRU(5), L.Dense(1)
    paired = Model(text, dense(gru(embedding(text))))
    assert len(paired.embedded_inputs) == 1
    shared_text = L.Input((STEPS,))
    vectors = embedding(shared_text)   # read twice: looked up once, no pairing
    pooled = L.GlobalAveragePooling1D()(vectors)
    both = Model(shared_text, L.Concatenate()([gru(vectors), pooled]))
    assert both.embedded_inputs == {}
    calls = _spy(monkeypatch)
    tokens = _tokens(1)

    def by_hand(t):
        return dense(*gru(*embedding(t, None)))[0]

    ours = _outputs_and_gradients(paired, paired, tokens)
    assert calls == [1]
    theirs = _outputs_and_gradients(paired, by_hand, tokens)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    both(tokens).sum().backward()
    assert calls == [1]


def test_bad_token_ids_still_name_the_fix():
    model = Sequential([L.Input((STEPS,)), L.Embedding(VOCABULARY, 6), L.GRU(5)])
    tokens = _tokens()
    tokens[0, 0] = VOCABULARY
    with pytest.raises(DataError, match="raise input_dim"):
        model(tokens)
