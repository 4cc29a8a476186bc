import json

import pytest

from grukit.data import OOV_ID, PAD_ID, WordTokenizer
from grukit.errors import ConfigError, DataError


def test_what_tokens_look_like():
    tokenizer = WordTokenizer()
    text = "I DON'T like it!!!<br /><br/>Well-made, 3.5/10... students' rock'n'roll café’s 21st"
    assert tokenizer.tokenize(text) == [
        "i", "don't", "like", "it", "!", "!", "!", "well", "-", "made", ",", "3", ".", "5", "/", "10",
        ".", ".", ".", "students", "'", "rock'n'roll", "café's", "21st"]


def test_case_and_html_options():
    assert WordTokenizer(lower=False).tokenize("Don't<br />GO") == ["Don't", "GO"]
    assert WordTokenizer(strip_html=False).tokenize("a<br />b") == ["a", "<", "br", "/", ">", "b"]


def test_ids_by_frequency_with_deterministic_ties():
    texts = ["b a c", "a b", "d c", "z y", "a"]
    tokenizer = WordTokenizer().fit(texts)
    # a: 3, then b and c (2 each, by code point), then d, y, z (1 each)
    assert tokenizer.words == ["<pad>", "<oov>", "a", "b", "c", "d", "y", "z"]
    assert tokenizer.word_index["a"] == 2 and len(tokenizer) == 8
    assert WordTokenizer().fit(list(reversed(texts))).words == tokenizer.words
    assert tokenizer.texts_to_sequences(["a z q", ""]) == [[2, 7, OOV_ID], []]
    assert PAD_ID == 0 and OOV_ID == 1


def test_num_words_caps_the_id_space_like_keras():
    texts = ["the cat sat on the mat", "the dog sat", "a cat"]
    tokenizer = WordTokenizer(num_words=5).fit(texts)
    assert len(tokenizer) == 5
    assert tokenizer.words == ["<pad>", "<oov>", "the", "cat", "sat"]
    sequences = tokenizer.texts_to_sequences(texts)
    assert sequences[0] == [2, 3, 4, 1, 2, 1]
    assert max(max(s) for s in sequences) < 5


def test_min_count():
    tokenizer = WordTokenizer(min_count=2).fit(["a a b", "c a b"])
    assert tokenizer.words == ["<pad>", "<oov>", "a", "b"]


def test_save_and_load_round_trip(tmp_path):
    texts = ["Great movie, I loved it!", "Terrible. Didn't like it<br />at all.", "café crème"]
    tokenizer = WordTokenizer(num_words=30, lower=True).fit(texts)
    path = tokenizer.save(tmp_path / "run" / "tokenizer.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "grukit.WordTokenizer" and data["words"][:2] == ["<pad>", "<oov>"]
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary file left
    loaded = WordTokenizer.load(path)
    assert loaded.words == tokenizer.words and loaded.num_words == 30
    probe = texts + ["unseen words here", "CAFÉ"]
    assert loaded.texts_to_sequences(probe) == tokenizer.texts_to_sequences(probe)
    assert loaded.sequences_to_texts(loaded.texts_to_sequences(["i loved it zzz"])) == ["i loved it <oov>"]


def test_sequences_to_texts_drops_padding_and_checks_ids():
    tokenizer = WordTokenizer().fit(["a b"])
    assert tokenizer.sequences_to_texts([[0, 0, 2, 1, 3]]) == ["a <oov> b"]
    with pytest.raises(DataError, match="id 9"):
        tokenizer.sequences_to_texts([[9]])


def test_load_rejects_damaged_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "grukit.WordTokenizer", "words": [', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.json: not valid JSON at line 1"):
        WordTokenizer.load(broken)
    other = tmp_path / "other.json"
    other.write_text('{"model": {}}', encoding="utf-8")
    with pytest.raises(DataError, match="not a grukit WordTokenizer file"):
        WordTokenizer.load(other)
    bad_words = tmp_path / "words.json"
    bad_words.write_text(json.dumps({"format": "grukit.WordTokenizer", "version": 1, "words": ["a", "b"]}))
    with pytest.raises(DataError, match="damaged"):
        WordTokenizer.load(bad_words)
    with pytest.raises(DataError, match="no such file"):
        WordTokenizer.load(tmp_path / "missing.json")


def test_bad_use():
    with pytest.raises(ConfigError, match="fit"):
        WordTokenizer().texts_to_sequences(["a"])
    with pytest.raises(ConfigError, match="one string"):
        WordTokenizer().fit("a whole text")
    with pytest.raises(DataError, match=r"texts\[1\] is int"):
        WordTokenizer().fit(["a", 3])
    with pytest.raises(DataError, match="no word"):
        WordTokenizer().fit(["", "   ", ""])
    with pytest.raises(ConfigError, match="num_words"):
        WordTokenizer(num_words=2)
    with pytest.raises(ConfigError, match="min_count"):
        WordTokenizer(min_count=0)


def test_batches_join_in_order(monkeypatch):
    import grukit.data.tokenizer as module

    texts = ["a b", "b c d", "", "d a", "c"]
    tokenizer = WordTokenizer().fit(texts)
    whole = tokenizer.texts_to_sequences(texts)
    monkeypatch.setattr(module, "ENCODE_BATCH", 2)
    assert tokenizer.texts_to_sequences(texts) == whole
    assert whole == [tokenizer.texts_to_sequences([t])[0] for t in texts]


def test_punctuation_can_be_dropped_like_keras():
    text = "I DON'T like it!!!<br />Well-made, 3.5/10... students' rock'n'roll (sic)"
    tokens = WordTokenizer(punctuation=False).tokenize(text)
    # Keras's Tokenizer: the filtered marks become spaces and apostrophes inside words stay.
    assert tokens == ["i", "don't", "like", "it", "well", "made", "3", "5", "10", "students", "rock'n'roll", "sic"]
    assert "!" in WordTokenizer(punctuation=True).tokenize(text)
    tokenizer = WordTokenizer(punctuation=False).fit(["Good!!! Very, very good.", "bad... bad?"])
    assert tokenizer.words == ["<pad>", "<oov>", "bad", "good", "very"]
    assert tokenizer.texts_to_sequences(["good, bad!"]) == [[3, 2]]


def test_punctuation_setting_survives_save_and_load(tmp_path):
    tokenizer = WordTokenizer(punctuation=False).fit(["a, b. c!", "a b"])
    loaded = WordTokenizer.load(tokenizer.save(tmp_path / "tokenizer.json"))
    assert loaded.punctuation is False and "punctuation=False" in repr(loaded)
    assert loaded.texts_to_sequences(["a! b, c?"]) == tokenizer.texts_to_sequences(["a! b, c?"]) == [[2, 3, 4]]
    # files written before the option existed kept punctuation
    data = tokenizer.to_dict()
    del data["punctuation"]
    data["words"] = ["<pad>", "<oov>", "a", "!"]
    assert WordTokenizer.from_dict(data).texts_to_sequences(["a!"]) == [[2, 3]]


def _keras_tokenizer_words(texts, count):
    """A literal transcription of keras.preprocessing.text.Tokenizer's defaults (lower-case, the
    filters below become spaces, split on spaces, ids by falling frequency)."""
    import collections

    filters = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
    table = str.maketrans({c: " " for c in filters})
    counts = collections.Counter(w for t in texts for w in t.lower().translate(table).split())
    return [w for w, _ in counts.most_common(count)]


@pytest.mark.data
def test_imdb_vocabulary_without_punctuation_is_keras_tokenizers(shared_data):
    from grukit.data import read_imdb

    texts, _ = read_imdb(shared_data / "imdb", "train")
    texts = texts[:5000]
    words = WordTokenizer(num_words=10_000, punctuation=False).fit(texts).words[2:]
    keras_words = _keras_tokenizer_words(texts, len(words))
    assert not any(len(w) == 1 and not w.isalnum() for w in words)
    # Keras keeps "br" from the <br /> line breaks (its 7th word here); grukit removes them first.
    assert "br" in keras_words[:10] and "br" not in words
    # Otherwise the same vocabulary, up to frequency ties and the '_' Keras filters but \w keeps.
    assert len(set(words) & set(keras_words)) / len(words) > 0.97
    assert words[:20] == [w for w in keras_words if w != "br"][:20]
