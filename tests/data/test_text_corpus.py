import gzip

import numpy as np
import pytest

from grukit.data import CharVocabulary, char_chunks, read_corpus
from grukit.errors import ConfigError, DataError


def test_vocabulary_from_text_is_code_point_ordered():
    vocabulary = CharVocabulary.from_text("hello, wörld\n")
    assert vocabulary.chars == ("\n", " ", ",", "d", "e", "h", "l", "o", "r", "w", "ö")
    assert len(vocabulary) == 11 and "ö" in vocabulary and "x" not in vocabulary
    ids = vocabulary.encode("hello")
    assert ids.dtype == np.int64 and ids.tolist() == [5, 4, 6, 6, 7]
    assert vocabulary.decode(ids) == "hello"
    assert vocabulary.decode(np.array([10, 0])) == "ö\n"
    assert vocabulary.encode("").shape == (0,)


def test_encode_decode_round_trip_beyond_the_basic_plane():
    text = "naïve 🎵 café\tend"
    vocabulary = CharVocabulary.from_text(text)
    ids = vocabulary.encode(text)
    assert len(ids) == len(text)
    assert vocabulary.decode(ids) == text
    assert [vocabulary.chars[i] for i in ids] == list(text)


def test_min_count_and_unknown_character():
    vocabulary = CharVocabulary.from_text("aaab", min_count=2, unknown="?")
    assert vocabulary.chars == ("?", "a")
    assert vocabulary.encode("abz").tolist() == [1, 0, 0]


def test_unknown_character_error_names_source_line_and_column():
    vocabulary = CharVocabulary.from_text("ab\n")
    with pytest.raises(DataError, match=r"valid\.txt: character 'z' \(U\+007A\) at line 2, column 3 is not in "
                                        r"the vocabulary"):
        vocabulary.encode("ab\nabz", source="valid.txt")


def test_decode_errors():
    vocabulary = CharVocabulary.from_text("ab")
    with pytest.raises(DataError, match=r"id 2 at position 1 is outside \[0, 1\]"):
        vocabulary.decode([0, 2])
    with pytest.raises(DataError, match="1-D sequence of integer ids"):
        vocabulary.decode([[0]])


def test_constructor_errors():
    with pytest.raises(ConfigError, match="one character"):
        CharVocabulary(["ab"])
    with pytest.raises(ConfigError, match="listed twice"):
        CharVocabulary("aba")
    with pytest.raises(ConfigError, match="unknown character must be one of the chars"):
        CharVocabulary("ab", unknown="?")
    with pytest.raises(DataError, match="non-empty str"):
        CharVocabulary.from_text("")


def test_save_and_load(tmp_path):
    vocabulary = CharVocabulary.from_text("hé\"llo\n", unknown="\ufffd")
    path = vocabulary.save(tmp_path / "run" / "chars.json")
    loaded = CharVocabulary.load(path)
    assert loaded.chars == vocabulary.chars and loaded.unknown == "\ufffd"
    assert [p.name for p in path.parent.iterdir()] == ["chars.json"]  # no temporary file left
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(DataError, match="not a grukit CharVocabulary file"):
        CharVocabulary.load(tmp_path / "other.json")
    (tmp_path / "dup.json").write_text('{"format": "grukit.CharVocabulary", "version": 1, "chars": "aa"}')
    with pytest.raises(DataError, match="listed twice"):
        CharVocabulary.load(tmp_path / "dup.json")


def test_char_chunks_shift_targets_by_one():
    inputs, targets = char_chunks(np.arange(8), length=3)
    np.testing.assert_array_equal(inputs, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(targets, [[1, 2, 3], [4, 5, 6]])
    inputs, targets = char_chunks(np.arange(6), length=3, stride=1)
    np.testing.assert_array_equal(inputs, [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(targets, [[1, 2, 3], [2, 3, 4], [3, 4, 5]])
    assert inputs.dtype == targets.dtype == np.int64
    exact, _ = char_chunks(np.arange(4), length=3)
    assert exact.tolist() == [[0, 1, 2]]


def test_char_chunks_errors():
    with pytest.raises(DataError, match="3 ids are too few for one chunk of length 3"):
        char_chunks(np.arange(3), length=3)
    with pytest.raises(ConfigError, match=r"char_chunks\(length=0\)"):
        char_chunks(np.arange(3), length=0)
    with pytest.raises(ConfigError, match=r"char_chunks\(stride=-1\)"):
        char_chunks(np.arange(9), length=2, stride=-1)
    with pytest.raises(DataError, match="must be 1-D"):
        char_chunks(np.zeros((2, 5)), length=2)


def test_read_corpus_plain_gzip_and_errors(tmp_path):
    plain = tmp_path / "input.txt"
    plain.write_text("First line\nSecond ✓\n", encoding="utf-8")
    assert read_corpus(plain) == "First line\nSecond ✓\n"
    packed = tmp_path / "input.txt.gz"
    packed.write_bytes(gzip.compress("zipped\n".encode()))
    assert read_corpus(packed) == "zipped\n"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nstill ok\nbad \xe9 byte\n")
    with pytest.raises(DataError, match=r"bad\.txt: not valid utf-8 at byte offset 16 \(line 3\)"):
        read_corpus(bad)
    assert read_corpus(bad, encoding="latin-1").endswith("bad é byte\n")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        read_corpus(empty)


def test_end_to_end_chunks_decode_to_the_text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcabcabca", encoding="utf-8")
    text = read_corpus(path)
    vocabulary = CharVocabulary.from_text(text)
    inputs, targets = char_chunks(vocabulary.encode(text), length=4)
    assert [vocabulary.decode(row) for row in inputs] == ["abca", "bcab"]
    assert [vocabulary.decode(row) for row in targets] == ["bcab", "cabc"]
