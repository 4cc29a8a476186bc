"""grukit.data.timeseries: reading, missing values, chronological splits, windows, scalers, MASE."""

import numpy as np
import pytest

from grukit.data.timeseries import (SeriesScaler, as_matrix, chronological_split, handle_missing, make_windows,
                                    mase, mase_scale, read_series)
from grukit.errors import ConfigError, DataError

CSV = '"Month","Passengers","Other"\n"1949-01",112,1.5\n"1949-02",118,2.5\n"1949-03",132,3.5\n"1949-04",129,4.5\n'


def write(tmp_path, text, name="series.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


# -- reading --------------------------------------------------------------------------------------

def test_read_series_named_columns(tmp_path):
    series = read_series(write(tmp_path, CSV), "Month", ["Other", "Passengers"])
    assert series.columns == ["Other", "Passengers"]
    np.testing.assert_array_equal(series.values, [[1.5, 112], [2.5, 118], [3.5, 132], [4.5, 129]])
    assert series.dates.dtype == np.dtype("datetime64[M]")
    assert str(series.dates[0]) == "1949-01"
    assert series.lines.tolist() == [2, 3, 4, 5]
    assert series.missing.count == 0 and series.missing.summary() == "no missing values"
    np.testing.assert_array_equal(series.column("Passengers"), [112, 118, 132, 129])


def test_missing_column_names_file_column_and_existing_columns(tmp_path):
    path = write(tmp_path, CSV)
    with pytest.raises(DataError) as caught:
        read_series(path, "Month", "Passengers_total")
    message = str(caught.value)
    assert str(path) in message and "'Passengers_total'" in message
    assert "'Month', 'Passengers', 'Other'" in message and "value_columns=" in message
    with pytest.raises(DataError, match="'Date'.*date_column="):
        read_series(path, "Date", "Passengers")


def test_non_utf8_names_file_and_line(tmp_path):
    raw = CSV.encode("utf-8").replace(b"1949-03", b"1949-03\xff")
    path = write(tmp_path, raw)
    with pytest.raises(DataError) as caught:
        read_series(path, "Month", "Passengers")
    message = str(caught.value)
    assert str(path) in message and "line 4" in message and "encoding=" in message


def test_unparsable_value_names_file_line_and_column(tmp_path):
    path = write(tmp_path, CSV.replace("118", "11B"))
    with pytest.raises(DataError) as caught:
        read_series(path, "Month", ["Passengers", "Other"])
    message = str(caught.value)
    assert str(path) in message and "line 3" in message and "'Passengers'" in message and "'11B'" in message


def test_unparsable_date_and_dates_out_of_order(tmp_path):
    with pytest.raises(DataError, match=r"line 3, column 'Month'.*'1949-13'"):
        read_series(write(tmp_path, CSV.replace("1949-02", "1949-13")), "Month", "Passengers")
    with pytest.raises(DataError, match=r"line 4, column 'Month'.*increasing time order"):
        read_series(write(tmp_path, CSV.replace("1949-03", "1949-01")), "Month", "Passengers")
    kept = read_series(write(tmp_path, CSV.replace("1949-02", "Feb 49")), "Month", "Passengers", parse_dates=False)
    assert kept.dates.tolist() == ["1949-01", "Feb 49", "1949-03", "1949-04"]


def test_short_row_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="line 3: 2 field"):
        read_series(write(tmp_path, CSV.replace('"1949-02",118,2.5', '"1949-02",118')), "Month", "Other")
    with pytest.raises(DataError, match="no data rows"):
        read_series(write(tmp_path, '"Month","Passengers"\n'), "Month", "Passengers")
    with pytest.raises(DataError, match="empty"):
        read_series(write(tmp_path, ""), "Month", "Passengers")


GAPS = '"Month","Passengers"\n"1949-01",\n"1949-02",118\n"1949-03",NA\n"1949-04",NaN\n"1949-05",130\n'


def test_missing_values_raise_by_default_with_count_and_lines(tmp_path):
    path = write(tmp_path, GAPS)
    with pytest.raises(DataError) as caught:
        read_series(path, "Month", "Passengers")
    message = str(caught.value)
    assert "3 missing value(s)" in message
    assert "line 2 column 'Passengers'" in message and "line 4" in message and "line 5" in message
    assert "missing='fill'" in message and "missing='drop'" in message


def test_missing_values_forward_fill_is_reported(tmp_path):
    with pytest.warns(UserWarning, match="3 missing value.*forward fill"):
        series = read_series(write(tmp_path, GAPS), "Month", "Passengers", missing="fill", fill="forward")
    # the leading gap takes the first value after it; the others the last value before them
    np.testing.assert_array_equal(series.values[:, 0], [118, 118, 118, 118, 130])
    assert series.missing.strategy == "fill" and series.missing.method == "forward"
    assert series.missing.locations == ((2, "Passengers"), (4, "Passengers"), (5, "Passengers"))


def test_missing_values_interpolate_and_drop(tmp_path):
    with pytest.warns(UserWarning, match="interpolation"):
        series = read_series(write(tmp_path, GAPS), "Month", "Passengers", missing="fill", fill="interpolate")
    np.testing.assert_allclose(series.values[:, 0], [118, 118, 122, 126, 130])
    with pytest.warns(UserWarning, match="dropped 3 row"):
        dropped = read_series(write(tmp_path, GAPS), "Month", "Passengers", missing="drop")
    np.testing.assert_array_equal(dropped.values[:, 0], [118, 130])
    assert [str(d) for d in dropped.dates] == ["1949-02", "1949-05"]
    assert dropped.lines.tolist() == [3, 6] and dropped.missing.dropped == (2, 4, 5)


def test_handle_missing_on_arrays_speaks_of_rows():
    with pytest.raises(DataError, match="1 missing value.*row 1 column '0'"):
        handle_missing(np.array([[1.0], [np.nan], [3.0]]))
    with pytest.raises(ConfigError, match="missing='guess'"):
        handle_missing(np.ones((2, 1)), missing="guess")
    with pytest.raises(DataError, match="no values at all"):
        handle_missing(np.full((3, 1), np.nan), missing="fill")


def test_as_matrix_accepts_arrays_and_named_columns():
    values, names, report = as_matrix([1.0, 2.0, 3.0])
    assert values.shape == (3, 1) and names == ["0"] and report.count == 0
    values, names, _ = as_matrix({"a": [1, 2], "b": [3, 4]}, columns=["b"])
    np.testing.assert_array_equal(values, [[3], [4]])
    assert names == ["b"]
    with pytest.raises(DataError, match="no column 'c'.*'a', 'b'"):
        as_matrix({"a": [1], "b": [2]}, columns="c")
    with pytest.raises(DataError, match="infinite value at row 1"):
        as_matrix([1.0, np.inf])


# -- splits ---------------------------------------------------------------------------------------

def test_chronological_split_by_fraction_and_count():
    split = chronological_split(10, validation=0.2, test=0.3)
    assert (split.train, split.validation, split.test) == (slice(0, 5), slice(5, 7), slice(7, 10))
    train, validation, test = split.apply(np.arange(10))
    assert train.tolist() == [0, 1, 2, 3, 4] and validation.tolist() == [5, 6] and test.tolist() == [7, 8, 9]
    # every training step comes before every validation step, which comes before every test step
    assert train.max() < validation.min() and validation.max() < test.min()
    split = chronological_split(144, validation=12, test=24)
    assert (split.train_end, split.validation_end) == (108, 120)
    assert chronological_split(2820, test=0.1).train_end == 2538


def test_chronological_split_rejects_bad_amounts():
    with pytest.raises(ConfigError, match="leave no training steps out of 10"):
        chronological_split(10, validation=5, test=5)
    with pytest.raises(ConfigError, match="test=1.5"):
        chronological_split(10, test=1.5)
    with pytest.raises(ConfigError, match="test=-1"):
        chronological_split(10, test=-1)
    with pytest.raises(DataError, match="series of 10 steps, got 9"):
        chronological_split(10).apply(np.arange(9))


# -- windows --------------------------------------------------------------------------------------

def test_windows_against_a_literal_example():
    windows = make_windows(np.arange(6.0), lookback=3, horizon=2)
    np.testing.assert_array_equal(windows.x, [[[0], [1], [2]], [[1], [2], [3]]])
    np.testing.assert_array_equal(windows.y, [[[3], [4]], [[4], [5]]])
    assert windows.x.shape == (2, 3, 1) and windows.y.shape == (2, 2, 1)
    assert windows.target_index.tolist() == [3, 4]


def test_windows_multivariate_targets_flat_and_stride():
    values = np.stack([np.arange(8.0), 10 * np.arange(8.0)], axis=1)   # (8, 2)
    windows = make_windows(values, lookback=2, horizon=2, stride=3, targets=[1], flat=True)
    assert windows.target_index.tolist() == [2, 5]
    np.testing.assert_array_equal(windows.x, [[[0, 0], [1, 10]], [[3, 30], [4, 40]]])
    np.testing.assert_array_equal(windows.y, [[20, 30], [50, 60]])    # (N, horizon * k), k = 1
    both = make_windows(values, lookback=2, horizon=2, flat=True)
    np.testing.assert_array_equal(both.y[0], [2, 20, 3, 30])          # time-major: step 0's targets first


def test_windows_with_targets_in_a_span_read_history_before_it():
    windows = make_windows(np.arange(10.0), lookback=3, horizon=2, start=7)
    assert windows.target_index.tolist() == [7, 8]
    np.testing.assert_array_equal(windows.x[0, :, 0], [4, 5, 6])
    train = make_windows(np.arange(10.0), lookback=3, horizon=2, end=7)
    assert train.y.max() == 6  # no target at or after the end
    with pytest.raises(DataError, match=r"no window fits.*\[9, 10\)"):
        make_windows(np.arange(10.0), lookback=3, horizon=2, start=9)


def test_series_shorter_than_one_window_says_length_and_needed_length():
    with pytest.raises(DataError) as caught:
        make_windows(np.arange(4.0), lookback=3, horizon=2)
    assert "has 4 time steps" in str(caught.value) and "= 5" in str(caught.value)
    with pytest.raises(ConfigError, match="lookback= must be an int >= 1"):
        make_windows(np.arange(4.0), lookback=0)


# -- scalers --------------------------------------------------------------------------------------

def test_scaler_is_fitted_on_the_training_part_only():
    values = np.concatenate([np.linspace(0, 1, 80), np.linspace(50, 60, 20)])[:, None]  # a jump after training
    split = chronological_split(len(values), test=20)
    scaler = SeriesScaler("standard").fit(values[split.train])
    np.testing.assert_allclose(scaler.center, [values[:80].mean()])
    assert not np.isclose(scaler.center[0], values.mean())
    scaled = scaler.transform(values)
    np.testing.assert_allclose(scaled[:80].mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled[:80].std(), 1.0)
    np.testing.assert_allclose(scaler.inverse_transform(scaled), values)


def test_scalers_columns_and_round_trip_through_a_dict():
    values = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, 50.0]])
    scaler = SeriesScaler("minmax").fit(values)
    np.testing.assert_allclose(scaler.transform(values), [[0, 0], [1, 0.5], [0.5, 1]])
    restored = SeriesScaler.from_dict(scaler.to_dict())
    forecasts = np.array([[[0.5], [1.0]]])                               # (N, horizon, k) of column 1
    np.testing.assert_allclose(restored.inverse_transform(forecasts, columns=[1]), [[[30.0], [50.0]]])
    np.testing.assert_allclose(restored.transform(values), scaler.transform(values))
    standard = SeriesScaler("standard").fit(values)
    np.testing.assert_allclose(SeriesScaler.from_dict(standard.to_dict()).transform(values), standard.transform(values))
    none = SeriesScaler("none").fit(values)
    np.testing.assert_array_equal(none.transform(values), values)
    with pytest.raises(ConfigError, match="scaler='robust'"):
        SeriesScaler("robust")
    with pytest.raises(ConfigError, match="before fit"):
        SeriesScaler().transform(values)


# -- MASE -----------------------------------------------------------------------------------------

def test_mase_against_the_literal_formula():
    training = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 8.0])
    actual, forecast = np.array([9.0, 7.0, 10.0]), np.array([8.0, 8.0, 12.0])
    # period 1: in-sample naive MAE = (2 + 1 + 3 + 1 + 4) / 5 = 2.2; forecast MAE = (1 + 1 + 2) / 3
    assert mase(actual, forecast, training) == pytest.approx((4 / 3) / 2.2)
    # period 2: |2-1|, |5-3|, |4-2|, |8-5| -> 8 / 4 = 2.0
    np.testing.assert_allclose(mase_scale(training, period=2), [2.0])
    assert mase(actual, forecast, training, period=2) == pytest.approx((4 / 3) / 2.0)
    # two target columns: the mean of the per-column MASEs
    two = np.stack([training, 2 * training], axis=1)
    y, p = np.stack([actual, actual], axis=1), np.stack([forecast, actual], axis=1)
    assert mase(y, p, two) == pytest.approx(((4 / 3) / 2.2 + 0.0) / 2)


def test_mase_rejects_a_constant_or_short_training_part():
    with pytest.raises(DataError, match="constant series"):
        mase_scale(np.ones(5))
    with pytest.raises(DataError, match="got 3 steps for period=12"):
        mase_scale(np.arange(3.0), period=12)


# -- real data ------------------------------------------------------------------------------------

@pytest.mark.data
def test_real_series_read_as_provenance_says(shared_data):
    folder = shared_data / "timeseries"
    airline = read_series(folder / "airline-passengers.csv", "Month", "Passengers")
    assert len(airline) == 144 and str(airline.dates[0]) == "1949-01" and str(airline.dates[-1]) == "1960-12"
    assert airline.values.mean() == pytest.approx(280.2986, abs=1e-4)
    sunspots = read_series(folder / "monthly-sunspots.csv", "Month", "Sunspots")
    assert len(sunspots) == 2820 and sunspots.values.max() == 253.8
    temperatures = read_series(folder / "daily-min-temperatures.csv", "Date", "Temp")
    assert len(temperatures) == 3650 and temperatures.values.mean() == pytest.approx(11.1778, abs=1e-4)
