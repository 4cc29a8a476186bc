"""The readers and the tokenizer on the real datasets in ../shared/data (skipped where absent)."""

import collections

import pytest

from grukit.data import WordTokenizer, pad_sequences, read_imdb, read_polarity

pytestmark = pytest.mark.data


@pytest.mark.parametrize("split", ["train", "test"])
def test_imdb_counts(shared_data, split):
    texts, labels = read_imdb(shared_data / "imdb", split)
    assert len(texts) == 25_000
    assert collections.Counter(labels) == {0: 12_500, 1: 12_500}
    assert all(isinstance(t, str) and t for t in texts)
    if split == "train":
        assert "Bromwell High is a cartoon comedy" in texts[1] and labels[1] == 1  # id 0, pos


def test_imdb_tokenized(shared_data):
    texts, labels = read_imdb(shared_data / "imdb", "train")
    tokenizer = WordTokenizer(num_words=20_000).fit(texts)
    sequences = tokenizer.texts_to_sequences(texts)
    x = pad_sequences(sequences, maxlen=200)
    assert x.shape == (25_000, 200) and x.max() < 20_000
    assert len(tokenizer) == 20_000
    assert tokenizer.words[2:5] == ["the", ".", ","]
    assert "<br" not in " ".join(tokenizer.words) and "don't" in tokenizer
    # almost every token of the training texts is in a 20k vocabulary
    total = sum(map(len, sequences))
    assert sum(s.count(1) for s in sequences) / total < 0.05


def test_polarity_counts_and_encodings(shared_data):
    texts, labels = read_polarity(shared_data / "rt-polarity")
    assert collections.Counter(labels) == {0: 5_331, 1: 5_331}
    original = shared_data / "rt-polarity" / "original-cp1252"
    with pytest.raises(Exception, match=r"byte offset .*encoding="):
        read_polarity(original)
    assert read_polarity(original, encoding="cp1252") == (texts, labels)
