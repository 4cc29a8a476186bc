import gzip

import numpy as np
import pytest

from grukit.data import WordTokenizer, load_word_vectors
from grukit.errors import ConfigError, DataError

GLOVE = "the 0.1 0.2 0.3\nmovie 1 2 3\n, -1 -2 -3\ngood 0.5 0.5 0.5\nunused 9 9 9\n"


@pytest.fixture
def tokenizer():
    # ids: the 2, movie 3, good 4, bad 5 (by frequency, ties by code point)
    return WordTokenizer().fit(["the movie the movie the good", "bad good movie the"])


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_glove_file(tmp_path, tokenizer):
    assert tokenizer.words == ["<pad>", "<oov>", "the", "movie", "good", "bad"]
    matrix, coverage = load_word_vectors(write(tmp_path / "glove.txt", GLOVE), tokenizer, seed=3)
    assert matrix.dtype == np.float32 and matrix.shape == (6, 3)
    np.testing.assert_array_equal(matrix[0], 0.0)
    np.testing.assert_allclose(matrix[2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(matrix[3], [1, 2, 3])
    np.testing.assert_allclose(matrix[4], [0.5, 0.5, 0.5])
    for row in (1, 5):  # OOV and the word without a vector: U(-0.05, 0.05)
        assert np.all(np.abs(matrix[row]) <= 0.05) and np.any(matrix[row] != 0)
    assert (coverage.found, coverage.total, coverage.dim) == (3, 4, 3)
    assert coverage.share == 0.75 and coverage.missing == ["bad"]
    assert "3 of 4 vocabulary words (75.0%)" in str(coverage) and "bad" in str(coverage)
    again, _ = load_word_vectors(tmp_path / "glove.txt", tokenizer, seed=3)
    other, _ = load_word_vectors(tmp_path / "glove.txt", tokenizer, seed=4)
    np.testing.assert_array_equal(again, matrix)
    assert not np.array_equal(other[5], matrix[5])


def test_word2vec_header_gzip_and_case_fallback(tmp_path, tokenizer):
    text = "4 2\nThe 1 1\nmovie 2 2\nGOOD 3 3\ngood 4 4\n"
    path = tmp_path / "vectors.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    matrix, coverage = load_word_vectors(path, tokenizer)
    assert matrix.shape == (6, 2)
    np.testing.assert_allclose(matrix[2], [1, 1])  # "the" from "The"
    np.testing.assert_allclose(matrix[4], [4, 4])  # the exact entry wins over "GOOD"
    assert coverage.found == 3 and coverage.lowercase_matches == 1
    _, strict = load_word_vectors(path, tokenizer, lowercase_fallback=False)
    assert strict.found == 2 and strict.missing == ["the", "bad"]


def test_other_vocabulary_forms(tmp_path):
    path = write(tmp_path / "v.txt", GLOVE)
    matrix, coverage = load_word_vectors(path, {"<pad>": 0, "<oov>": 1, "movie": 2, "nope": 3})
    assert matrix.shape == (4, 3) and coverage.found == 1
    np.testing.assert_allclose(matrix[2], [1, 2, 3])
    matrix, coverage = load_word_vectors(path, ["<pad>", "<oov>", ",", "good"], dim=3)
    np.testing.assert_allclose(matrix[2:], [[-1, -2, -3], [0.5, 0.5, 0.5]])
    with pytest.raises(ConfigError, match="vocabulary must be"):
        load_word_vectors(path, 42)


def test_malformed_lines_name_file_and_line(tmp_path, tokenizer):
    short = write(tmp_path / "short.txt", "the 1 2 3\nmovie 1 2\n")
    with pytest.raises(DataError, match=r"short.txt: line 2 has 2 values after the word, expected 3"):
        load_word_vectors(short, tokenizer)
    with pytest.raises(DataError, match=r"line 1 has 3 values after the word, expected 4 \(from the dim"):
        load_word_vectors(short, tokenizer, dim=4)
    long = write(tmp_path / "long.txt", "the 1 2 3\nmovie 1 2 3 4\n")
    with pytest.raises(DataError, match=r"long.txt: line 2 has 4 values"):
        load_word_vectors(long, tokenizer)
    text = write(tmp_path / "nan.txt", "the 1 2 3\nmovie 1 x 3\n")
    with pytest.raises(DataError, match=r"nan.txt: line 2 \(word 'movie'\) has a value that is not a number"):
        load_word_vectors(text, tokenizer)
    header = write(tmp_path / "header.txt", "2 3\nthe 1 2 3\n")
    with pytest.raises(DataError, match="header line says 3"):
        load_word_vectors(header, tokenizer, dim=5)
    latin = write(tmp_path / "latin.txt", "the 1 2 3\ncaf\xe9 1 2 3\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"latin.txt: line 2 is not valid utf-8 at byte offset 13"):
        load_word_vectors(latin, tokenizer)
    _, coverage = load_word_vectors(latin, tokenizer, encoding="latin-1")
    assert coverage.found == 1
    with pytest.raises(DataError, match="no vectors"):
        load_word_vectors(write(tmp_path / "empty.txt", "\n"), tokenizer)


def test_words_with_spaces_are_skipped(tmp_path, tokenizer):
    # glove.840B has a few entries like ". . . 0.1 0.2": more fields, the second not a number
    path = write(tmp_path / "840b.txt", "the 1 2 3\n. . . 4 5 6\nmovie 7 8 9\n")
    matrix, coverage = load_word_vectors(path, tokenizer)
    assert coverage.found == 2
    np.testing.assert_allclose(matrix[3], [7, 8, 9])
