import itertools
import os

import numpy as np
import pytest

from grukit.data import pad_sequences
from grukit.errors import ConfigError, DataError

SEQUENCES = [[1, 2, 3, 4, 5], [], [6], [7, 8, 9], [], [10, 11, 12, 13, 14, 15, 16]]


@pytest.fixture(scope="module")
def keras_pad():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    return keras.utils.pad_sequences


@pytest.mark.parametrize("padding,truncating,maxlen", list(itertools.product(
    ["pre", "post"], ["pre", "post"], [None, 1, 2, 3, 5, 7, 10])))
def test_matches_keras(keras_pad, padding, truncating, maxlen):
    for sequences in (SEQUENCES, [[]], [[], []], [[4]], [[1, 2], [3, 4]]):
        ours = pad_sequences(sequences, maxlen=maxlen, padding=padding, truncating=truncating, value=0)
        theirs = keras_pad(sequences, maxlen=maxlen, padding=padding, truncating=truncating, value=0, dtype="int64")
        assert ours.dtype == np.int64 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("padding,truncating", list(itertools.product(["pre", "post"], ["pre", "post"])))
def test_matches_keras_with_value_dtype_and_vector_items(keras_pad, padding, truncating):
    ours = pad_sequences(SEQUENCES, maxlen=4, padding=padding, truncating=truncating, value=-1, dtype="int32")
    theirs = keras_pad(SEQUENCES, maxlen=4, padding=padding, truncating=truncating, value=-1)
    assert ours.dtype == theirs.dtype == np.int32
    np.testing.assert_array_equal(ours, theirs)
    vectors = [np.arange(6.0).reshape(3, 2), np.zeros((0, 2)), np.ones((1, 2))]
    ours = pad_sequences(vectors, maxlen=2, padding=padding, truncating=truncating, value=0.5, dtype="float32")
    theirs = keras_pad(vectors, maxlen=2, padding=padding, truncating=truncating, value=0.5, dtype="float32")
    assert ours.shape == (3, 2, 2)
    np.testing.assert_array_equal(ours, theirs)


def test_documented_examples_and_edges():
    np.testing.assert_array_equal(pad_sequences([[1, 2, 3], [4]], maxlen=2), [[2, 3], [0, 4]])
    np.testing.assert_array_equal(pad_sequences([[1, 2, 3], [4]], maxlen=2, padding="post", truncating="post"),
                                  [[1, 2], [4, 0]])
    assert pad_sequences([[1, 2], [3]], maxlen=0).shape == (2, 0)
    assert pad_sequences([]).shape == (0, 0)
    assert pad_sequences([np.array([1, 2])]).dtype == np.int64


def test_bad_arguments():
    with pytest.raises(ConfigError, match="padding"):
        pad_sequences([[1]], padding="left")
    with pytest.raises(ConfigError, match="truncating"):
        pad_sequences([[1]], truncating="middle")
    with pytest.raises(ConfigError, match="maxlen"):
        pad_sequences([[1]], maxlen=-1)
    with pytest.raises(DataError, match=r"sequences\[1\] is int"):
        pad_sequences([[1], 5])
    with pytest.raises(DataError, match="list of sequences"):
        pad_sequences(5)
    with pytest.raises(DataError, match="shape"):
        pad_sequences([np.zeros((2, 3)), np.zeros((2, 4))])
