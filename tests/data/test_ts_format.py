import gzip

import numpy as np
import pytest

from grukit.data import TimeSeriesDataset, read_ts
from grukit.errors import ConfigError, DataError

HEADER = """# a comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b c
@data
"""
# case 1: 3 steps, label b; case 2: 2 steps with a missing value, label a
GOOD = HEADER + "1,2,3:4,5,6:b\n0.5,?:-1e2,7:a\n"


def write(tmp_path, text, name="toy.ts"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_sequences_labels_and_class_names(tmp_path):
    data = read_ts(write(tmp_path, GOOD))
    assert isinstance(data, TimeSeriesDataset)
    assert len(data) == 2 and data.num_channels == 2 and data.num_classes == 3
    assert data.class_names == ("a", "b", "c")
    assert data.problem_name == "Toy"
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(data.sequences[0], [[1, 4], [2, 5], [3, 6]])  # (T, C): time first
    second = data.sequences[1]
    assert second.shape == (2, 2) and np.isnan(second[1, 0])
    np.testing.assert_array_equal(second[[0, 1, 0], [0, 1, 1]], [0.5, 7, -100])
    assert data.lengths.tolist() == [3, 2]


def test_padded_puts_each_case_first_and_pads_after(tmp_path):
    x, lengths = read_ts(write(tmp_path, GOOD)).padded(value=-9)
    assert x.shape == (2, 3, 2) and x.dtype == np.float32 and lengths.tolist() == [3, 2]
    np.testing.assert_array_equal(x[1, 2], [-9, -9])
    np.testing.assert_array_equal(x[0], [[1, 4], [2, 5], [3, 6]])
    assert read_ts(write(tmp_path, GOOD)).padded(maxlen=5)[0].shape == (2, 5, 2)
    with pytest.raises(ConfigError, match="longest case has 3 steps"):
        read_ts(write(tmp_path, GOOD)).padded(maxlen=2)


def test_gzip_crlf_blank_lines_and_univariate_without_dimensions(tmp_path):
    text = "@problemName U\r\n@univariate true\r\n@classLabel true 0 1\r\n\r\n@data\r\n1,2:1\r\n\r\n3:0\r\n"
    path = tmp_path / "u.ts.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(text)
    data = read_ts(path)
    assert [s.tolist() for s in data.sequences] == [[[1.0], [2.0]], [[3.0]]]
    assert data.labels.tolist() == [1, 0]


def test_regression_targets_and_unlabelled_files(tmp_path):
    targets = read_ts(write(tmp_path, "@dimensions 1\n@targetLabel true\n@data\n1,2:0.25\n3:-1\n"))
    assert targets.labels.dtype == np.float64 and targets.labels.tolist() == [0.25, -1.0]
    unlabelled = read_ts(write(tmp_path, "@dimensions 2\n@classLabel false\n@data\n1,2:3,4\n"))
    assert unlabelled.labels is None
    np.testing.assert_array_equal(unlabelled.sequences[0], [[1, 3], [2, 4]])


def error_of(tmp_path, text):
    path = write(tmp_path, text, "bad.ts")
    with pytest.raises(DataError) as info:
        read_ts(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_ragged_channels_name_line_and_lengths(tmp_path):
    message = error_of(tmp_path, HEADER + "1,2,3:4,5,6:b\n1,2,3:4,5:a\n")
    assert "line 11" in message and "channel 1: 3, channel 2: 2" in message


def test_wrong_number_of_dimensions(tmp_path):
    message = error_of(tmp_path, HEADER + "1,2:3,4:5,6:a\n")
    assert "line 10" in message and "3 channel(s)" in message and "@dimensions 2" in message


def test_label_not_in_class_label(tmp_path):
    message = error_of(tmp_path, GOOD + "1:2:z\n")
    assert "line 12" in message and "label 'z' is not in @classLabel (a b c)" in message


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "bad.ts"
    path.write_bytes(GOOD.encode() + b"1,2:3,4:\xff\n")
    with pytest.raises(DataError, match=r"bad\.ts: not valid utf-8 .*\(line 12\)"):
        read_ts(path)


def test_empty_data_section_and_missing_data_line(tmp_path):
    assert "data section after '@data' is empty" in error_of(tmp_path, HEADER + "\n\n")
    assert "no '@data' line" in error_of(tmp_path, "@problemName X\n@dimensions 1\n")


def test_non_number_values_and_timestamps(tmp_path):
    message = error_of(tmp_path, HEADER + "1,x,3:4,5,6:b\n")
    assert "line 10: channel 1, value 2 is 'x'" in message
    assert "@timeStamps true" in error_of(tmp_path, "@timeStamps true\n@data\n(0,1):a\n")


def test_header_errors(tmp_path):
    assert "line 1: @dimensions must be a positive integer" in error_of(tmp_path, "@dimensions two\n@data\n1\n")
    assert "line 2: @dimensions says 2" in error_of(tmp_path, "@univariate true\n@dimensions 2\n@data\n1:2\n")
    assert "line 1: expected a '@key value' header line" in error_of(tmp_path, "1,2,3:a\n")
    assert "@classLabel true must list the class names" in error_of(tmp_path, "@classLabel true\n@data\n1:a\n")


def test_equal_length_with_series_length_is_checked(tmp_path):
    text = "@dimensions 1\n@equalLength true\n@seriesLength 2\n@classLabel true a\n@data\n1,2:a\n1,2,3:a\n"
    assert "line 7: 3 values per channel" in error_of(tmp_path, text)


@pytest.mark.data
def test_japanese_vowels_counts(shared_data):
    folder = shared_data / "japanese-vowels"
    train = read_ts(folder / "JapaneseVowels_TRAIN.ts")
    test = read_ts(folder / "JapaneseVowels_TEST.ts")
    assert (len(train), len(test)) == (270, 370)
    assert train.num_channels == test.num_channels == 12
    assert train.class_names == test.class_names == tuple("123456789")
    assert np.bincount(train.labels).tolist() == [30] * 9
    assert np.bincount(test.labels).tolist() == [31, 35, 88, 44, 29, 24, 40, 50, 29]
    lengths = np.concatenate([train.lengths, test.lengths])
    assert (lengths.min(), lengths.max()) == (7, 29)
    assert (train.lengths.max(), test.lengths.max()) == (26, 29)
    assert not any(np.isnan(s).any() for s in train.sequences + test.sequences)
    assert train.sequences[0][0, 0] == pytest.approx(1.860936)
