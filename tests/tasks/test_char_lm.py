"""CharLM: a tiny overfit, seeded sampling, greedy decoding, temperature checks, generation through
the streaming path, exact bits-per-character and baselines, save/load, and errors."""

import math

import numpy as np
import pytest
import torch

from grukit.errors import ConfigError, DataError
from grukit.nn.streaming import Streamer
from grukit.tasks import CharLM, CharNgram

REPEATED = "hello world! " * 40


def tiny(**options):
    settings = dict(sequence_length=16, units=32, embedding_dim=16, epochs=40, batch_size=32, learning_rate=3e-2,
                    validation=0, seed=0)
    settings.update(options)
    return CharLM(**settings)


@pytest.fixture(scope="module")
def overfit(_one_thread):
    return tiny().fit(REPEATED)


@pytest.fixture(scope="module")
def rough(_one_thread):
    """Barely trained on varied text: its distributions are wide, so sampling settings matter."""
    text = "the cat sat on the mat. a dog ran to the sun; who knew? " * 6
    return tiny(epochs=2, learning_rate=1e-2).fit(text)


def greedy_oracle(lm, prompt, length):
    """Greedy decoding the O(n^2) way: re-score the whole growing text with the full forward pass."""
    text = prompt
    for _ in range(length):
        text += lm.vocabulary.chars[int(np.argmax(lm.predict(text)[-1]))]
    return text[len(prompt):]


def test_a_short_repeated_string_is_learned_to_low_loss(overfit):
    assert overfit.history.history["loss"][-1] < 0.1
    result = overfit.evaluate(REPEATED[:130])
    assert result.scores["model"]["nats"] < 0.02
    assert result.scores["model"]["nats"] < result.scores["bigram"]["nats"] < result.scores["unigram"]["nats"]
    assert overfit.generate("hel", length=22, top_k=1) == "lo world! hello world!"
    stack = [type(layer).__name__ for layer in overfit.model.layers]
    assert stack == ["Embedding", "GRU", "TimeDistributed"] and overfit.model.layers[1].return_sequences


def test_top_k_1_is_greedy_and_small_temperatures_approach_it(rough):
    greedy = rough.generate("the ", length=25, top_k=1)
    assert greedy == greedy_oracle(rough, "the ", 25)                 # streaming equals the full forward
    for seed in range(3):
        assert rough.generate("the ", length=25, temperature=1e-4, seed=seed) == greedy
        assert rough.generate("the ", length=25, top_k=1, temperature=3.0, seed=seed) == greedy
    assert any(rough.generate("the ", length=25, seed=seed) != greedy for seed in range(3))


def test_the_same_seed_gives_the_same_text(rough):
    first = rough.generate("a ", length=40, temperature=1.2, seed=5)
    assert rough.generate("a ", length=40, temperature=1.2, seed=5) == first
    assert rough.generate("a ", length=40, temperature=1.2, seed=6) != first
    top = rough.generate("a ", length=40, top_k=3, seed=5)
    assert top == rough.generate("a ", length=40, top_k=3, seed=5)
    assert len(first) == 40 and set(first) <= set(rough.vocabulary.chars)
    assert rough.generate("a ", length=0) == ""


def test_top_k_keeps_only_the_k_most_likely_characters(rough):
    """With top_k=2 every generated character is one of the two most likely after the text before it."""
    prompt = "the "
    text = rough.generate(prompt, length=15, top_k=2, temperature=2.0, seed=1)
    probabilities = rough.predict(prompt + text)
    for position, char in enumerate(text):
        top_two = np.argsort(probabilities[len(prompt) - 1 + position])[-2:]
        assert rough.vocabulary.index[char] in top_two


def test_generation_runs_the_streamer_one_step_per_character(overfit, monkeypatch):
    calls = []
    original = Streamer.step

    def spy(self, frame):
        calls.append(np.shape(frame))
        return original(self, frame)

    def no_full_forward(*args, **kwargs):
        raise AssertionError("generate() ran the model over the whole text")

    monkeypatch.setattr(Streamer, "step", spy)
    monkeypatch.setattr(overfit.model, "forward", no_full_forward)
    text = overfit.generate("hel", length=30, top_k=1)
    assert len(text) == 30
    assert len(calls) == len("hel") + 30 - 1 and set(calls) == {(16,)}   # O(length): one frame per character


def test_a_layer_the_streamer_does_not_cover_falls_back_to_step():
    lm = tiny(epochs=30, cell_options={"activation": "relu"}).fit(REPEATED)
    with pytest.raises(ConfigError):
        lm.model.layers[1].recurrent.streamer()
    assert lm.generate("wor", length=12, top_k=1) == greedy_oracle(lm, "wor", 12)


@pytest.mark.parametrize("cell", ["lstm", "rnn", "mgu", "mingru"])
def test_other_cells_generate_through_their_streamer(cell):
    lm = tiny(cell=cell, epochs=3).fit(REPEATED)
    assert lm.generate("he", length=10, top_k=1) == greedy_oracle(lm, "he", 10)


def test_temperature_top_k_prompt_and_length_are_validated(overfit):
    for temperature in (0, 0.0, -1.0, math.nan, math.inf, "hot"):
        with pytest.raises(ConfigError, match=r"temperature=.*expected a finite number > 0"):
            overfit.generate("he", length=5, temperature=temperature)
    size = len(overfit.vocabulary)
    for top_k in (0, size + 1, 2.5, True):
        with pytest.raises(ConfigError, match=rf"top_k=.*\[1, {size}\]"):
            overfit.generate("he", length=5, top_k=top_k)
    with pytest.raises(ConfigError, match="prompt=''.*non-empty"):
        overfit.generate("", length=5)
    with pytest.raises(ConfigError, match="length=-1"):
        overfit.generate("he", length=-1)


def test_evaluate_reports_exact_nats_bits_and_perplexity(rough):
    text = "the dog sat. who ran?"
    result = rough.evaluate(text)
    ids = rough.vocabulary.encode(text)
    probabilities = rough.predict(text)                       # row i: the character after text[:i + 1]
    nats = -np.mean(np.log(probabilities[np.arange(len(text) - 1), ids[1:]]))
    model = result.scores["model"]
    assert result.characters == len(text) - 1
    assert model["nats"] == pytest.approx(nats, rel=1e-5)
    assert model["bits_per_character"] == pytest.approx(nats / math.log(2), rel=1e-5)
    assert model["perplexity"] == pytest.approx(math.exp(nats), rel=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-9)
    # the state is carried through the text: scoring in one piece equals the streaming steps
    assert "| GRU(32) |" in result.table() and "bigram (counts)" in result.table()


def test_ngram_baselines_are_counted_exactly():
    ids = np.array([0, 1, 0, 0, 2, 1])
    unigram = CharNgram(1, alpha=0.5).fit(ids, vocabulary_size=3)
    # counts 0: 3, 1: 2, 2: 1 over 6 characters
    test = np.array([2, 0, 1])
    expected = -np.mean([math.log((3 + 0.5) / (6 + 1.5)), math.log((2 + 0.5) / (6 + 1.5))])
    assert unigram.nats(test) == pytest.approx(expected)
    bigram = CharNgram(2, alpha=0.5).fit(ids, vocabulary_size=3)
    # pairs 01, 10, 00, 02, 21: after 0 -> {1: 1, 0: 1, 2: 1}; after 2 -> {1: 1}
    expected = -np.mean([math.log((0 + 0.5) / (1 + 1.5)), math.log((1 + 0.5) / (3 + 1.5))])
    assert bigram.nats(test) == pytest.approx(expected)
    restored = CharNgram.from_dict(bigram.to_dict())
    assert restored.nats(test) == bigram.nats(test)
    with pytest.raises(ConfigError, match="order=3"):
        CharNgram(3)


def test_save_and_load_generate_and_score_identically(rough, tmp_path):
    rough.save(tmp_path / "lm")
    loaded = CharLM.load(tmp_path / "lm")
    assert loaded.vocabulary.chars == rough.vocabulary.chars and loaded.config == rough.config
    assert loaded.generate("the ", 30, seed=3) == rough.generate("the ", 30, seed=3)
    assert loaded.evaluate("a cat ran.").scores == rough.evaluate("a cat ran.").scores


def test_text_files_unknown_characters_and_bad_input(rough, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first line is fine\nsecond \xff\xfe line\n")
    with pytest.raises(DataError, match=r"corpus\.txt: not valid utf-8 .*\(line 2\)"):
        tiny().fit(path)
    good = tmp_path / "good.txt"
    good.write_text(REPEATED, encoding="utf-8")
    assert tiny(epochs=1).fit(good).vocabulary.chars[0] == " "
    # a character the training text lacks stands for U+FFFD by default, or raises with unknown=None
    assert np.isfinite(rough.evaluate("the zebra").scores["model"]["nats"])
    strict = tiny(epochs=1, unknown=None).fit(REPEATED)
    with pytest.raises(DataError, match=r"character 'z' \(U\+007A\) at line 1, column 3"):
        strict.evaluate("hezlo")
    with pytest.raises(DataError, match="one chunk needs sequence_length"):
        tiny().fit("too short")
    with pytest.raises(DataError, match="at least 2 are needed"):
        rough.evaluate("t")
    with pytest.raises(DataError, match="expected the text .str. or a file path"):
        rough.evaluate(["not", "text"])
    with pytest.raises(ConfigError, match=r"generate\(\) before fit"):
        CharLM().generate("a", 3)
    with pytest.raises(ConfigError, match="units=0"):
        CharLM(units=0)


@pytest.mark.data
@pytest.mark.slow
def test_imdb_text_beats_the_unigram_and_bigram(shared_data):
    from grukit.data import read_imdb

    texts, _ = read_imdb(shared_data / "imdb", split="train")
    text = "\n".join(review.replace("<br />", "\n") for review in texts[:250])        # ~300k characters
    held_out = "\n".join(texts[-20:]).replace("<br />", "\n")
    lm = CharLM(sequence_length=100, units=128, embedding_dim=32, epochs=2, batch_size=32, learning_rate=5e-3,
                seed=0).fit(text)
    scores = lm.evaluate(held_out).scores
    assert scores["model"]["bits_per_character"] < scores["bigram"]["bits_per_character"]
    assert scores["bigram"]["bits_per_character"] < scores["unigram"]["bits_per_character"]
    assert len(lm.generate("The movie ", 50, seed=0)) == 50
