"""Time series in, forecasting windows out: CSV reading, missing values, chronological splits,
sliding windows, scalers fitted on the training part only, and MASE.

The path a forecasting task takes, every step numpy::

    series = read_series("airline-passengers.csv", date_column="Month", value_columns="Passengers")
    split = chronological_split(len(series), test=24)              # never shuffled
    scaler = SeriesScaler("standard").fit(series.values[split.train])  # the training part only
    windows = make_windows(scaler.transform(series.values), lookback=24, horizon=12, end=split.train_end)
    windows.x.shape, windows.y.shape                                # (85, 24, 1), (85, 12, 1)

Shapes: a series is ``(T, F)`` (T time steps, F value columns; a 1-D ``(T,)`` array is one
column). Windows are ``x: (N, lookback, F)`` and ``y: (N, horizon, k)`` for ``k`` target columns,
or ``y: (N, horizon * k)`` with ``flat=True`` (time-major: step 0's targets, then step 1's, ...).

Missing values are never handled silently: ``missing="raise"`` (the default) reports how many
there are and where; ``"fill"`` (``fill="forward"`` or ``"interpolate"``) and ``"drop"`` record a
:class:`MissingReport` on the result and issue a ``UserWarning`` saying what was done.

Metrics: MAE, RMSE and sMAPE need nothing but the forecasts and live in the metric registry of
:mod:`grukit.train.metrics` (``"mae"``, ``"rmse"``, ``"smape"``). MASE also needs the training
series (its scale is the in-sample seasonal-naive MAE), so it lives here, beside the other
functions that know what the training part of a series is: :func:`mase_scale` and :func:`mase`.

This module depends on nothing in grukit but ``grukit.errors`` and ``grukit.data._files``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from grukit.data._files import decode, read_bytes
from grukit.errors import ConfigError, DataError

MISSING_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
MISSING_STRATEGIES = ("raise", "fill", "drop")
FILL_METHODS = ("forward", "interpolate")
SCALER_KINDS = ("standard", "minmax", "none")
_SHOWN = 5  # locations listed in a message before "and N more"


# -- missing values -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MissingReport:
    """What was done about missing values.

    ``strategy``: "raise", "fill" or "drop"; ``method``: "forward" or "interpolate" for "fill";
    ``locations``: ``(position, column)`` of every missing value, where the position is the file's
    line number (``position_kind="line"``) or the 0-based row of an array (``"row"``);
    ``dropped``: the positions of the rows removed by "drop".
    """

    strategy: str
    method: str | None = None
    locations: tuple[tuple[int, str], ...] = ()
    dropped: tuple[int, ...] = ()
    position_kind: str = "line"

    @property
    def count(self) -> int:
        return len(self.locations)

    def where(self) -> str:
        shown = ", ".join(f"{self.position_kind} {p} column {c!r}" for p, c in self.locations[:_SHOWN])
        more = len(self.locations) - _SHOWN
        return shown + (f" and {more} more" if more > 0 else "")

    def summary(self) -> str:
        if not self.locations:
            return "no missing values"
        if self.strategy == "drop":
            return (f"{self.count} missing value(s) ({self.where()}): dropped {len(self.dropped)} row(s); the "
                    "remaining rows are no longer evenly spaced in time where rows were removed")
        how = {"forward": "forward fill (each gap takes the last value before it; a gap at the start takes "
                          "the first value after it)",
               "interpolate": "linear interpolation between the neighbouring values by position (a gap at "
                              "either end takes the nearest value)"}[self.method]
        return f"{self.count} missing value(s) ({self.where()}) filled by {how}"

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "method": self.method, "count": self.count,
                "locations": [list(item) for item in self.locations], "dropped": list(self.dropped),
                "position_kind": self.position_kind}


def _check_choice(argument: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{argument}={value!r} is not known; use one of {', '.join(map(repr, choices))}")


def handle_missing(values: np.ndarray, *, missing: str = "raise", fill: str = "forward",
                   source: str = "array", columns: Sequence[str] | None = None,
                   positions: Sequence[int] | None = None) -> tuple[np.ndarray, MissingReport]:
    """Deal with the NaNs of ``values`` ``(T, F)`` as ``missing`` says; returns ``(values, report)``.

    ``positions``: the file line of each row (the report then speaks of lines; else of 0-based
    rows). ``missing="raise"`` raises DataError naming how many values are missing and where;
    ``"fill"`` fills each column by ``fill`` ("forward" or "interpolate"); ``"drop"`` removes every
    row with a missing value. A fill or drop that changed anything warns with the report's summary.

    Example::

        filled, report = handle_missing(np.array([[1.0], [np.nan], [3.0]]), missing="fill", fill="interpolate")
        filled[:, 0], report.count          # array([1., 2., 3.]), 1
    """
    _check_choice("missing", missing, MISSING_STRATEGIES)
    _check_choice("fill", fill, FILL_METHODS)
    values = np.array(values, dtype=np.float64)
    kind = "line" if positions is not None else "row"
    positions = list(positions) if positions is not None else list(range(len(values)))
    columns = list(columns) if columns is not None else [str(i) for i in range(values.shape[1])]
    rows, cols = np.nonzero(np.isnan(values))
    locations = tuple((int(positions[r]), columns[c]) for r, c in zip(rows, cols))
    report = MissingReport(missing, fill if missing == "fill" else None, locations, (), kind)
    if not locations:
        return values, report
    if missing == "raise":
        raise DataError(f"{source}: {report.count} missing value(s) at {report.where()}; pass missing='fill' "
                        "(with fill='forward' or 'interpolate') or missing='drop' to handle them, or repair "
                        "the data")
    if missing == "drop":
        keep = ~np.isnan(values).any(axis=1)
        dropped = tuple(int(p) for p, k in zip(positions, keep) if not k)
        report = MissingReport("drop", None, locations, dropped, kind)
        values = values[keep]
    else:
        for column in range(values.shape[1]):
            values[:, column] = _fill_column(values[:, column], fill, source, columns[column])
    warnings.warn(f"{source}: {report.summary()}", UserWarning, stacklevel=2)
    return values, report


def _fill_column(column: np.ndarray, method: str, source: str, name: str) -> np.ndarray:
    present = ~np.isnan(column)
    if not present.any():
        raise DataError(f"{source}: column {name!r} has no values at all; nothing to fill from. Remove the "
                        "column from value_columns or supply data for it")
    index = np.arange(len(column))
    if method == "interpolate":
        return np.interp(index, index[present], column[present])
    last_seen = np.maximum.accumulate(np.where(present, index, -1))
    first = index[present][0]
    return column[np.where(last_seen >= 0, last_seen, first)]


# -- reading --------------------------------------------------------------------------------------

@dataclass
class TimeSeries:
    """A series read from a file or built from arrays.

    ``values``: ``(T, F)`` float64, one column per value column, in time order; ``dates``: ``(T,)``
    numpy datetime64 (or str with ``parse_dates=False``); ``columns``: the F column names;
    ``lines``: the file line of each row; ``missing``: what was done about missing values.

    Example::

        series = read_series(path, "Month", "Passengers")
        len(series), series.values.shape, series.missing.summary()   # 144, (144, 1), 'no missing values'
    """

    values: np.ndarray
    dates: np.ndarray
    columns: list[str]
    source: str = "array"
    lines: np.ndarray | None = None
    missing: MissingReport = field(default_factory=lambda: MissingReport("raise"))

    def __len__(self) -> int:
        return len(self.values)

    def column(self, name: str) -> np.ndarray:
        """The ``(T,)`` values of one column."""
        if name not in self.columns:
            raise DataError(f"{self.source}: no column {name!r}; the series has {self.columns}")
        return self.values[:, self.columns.index(name)]

    def first(self, steps: int) -> "TimeSeries":
        """The first ``steps`` steps, with their dates, lines and column names."""
        return replace(self, values=self.values[:steps], dates=self.dates[:steps],
                       lines=None if self.lines is None else self.lines[:steps])


def _names(value_columns: str | Sequence[str]) -> list[str]:
    names = [value_columns] if isinstance(value_columns, str) else list(value_columns)
    if not names:
        raise ConfigError("value_columns is empty; name at least one column holding the series' values")
    return names


def read_series(path: str | os.PathLike, date_column: str, value_columns: str | Sequence[str], *,
                missing: str = "raise", fill: str = "forward", missing_values: Sequence[str] = MISSING_TOKENS,
                parse_dates: bool = True, delimiter: str = ",", encoding: str = "utf-8") -> TimeSeries:
    """Read a CSV with a header row, a date column and one or more value columns.

    Raises DataError for: a missing file; bytes that are not ``encoding`` (file and line); a column
    that is not in the header (file, the column, the columns that exist); a row with too few
    fields, an unreadable value or date (file, line and column); dates out of order (file and line);
    no rows. Cells equal to one of ``missing_values`` are missing and handled as ``missing`` says
    (see :func:`handle_missing`). Gzip files are read transparently.

    Returns a :class:`TimeSeries` with ``values`` ``(T, len(value_columns))``.

    Example::

        series = read_series("monthly-sunspots.csv", date_column="Month", value_columns=["Sunspots"])
        series.values.shape, series.dates[0]     # (2820, 1), numpy.datetime64('1749-01')
    """
    names = _names(value_columns)
    source = str(path)
    text = decode(read_bytes(path), source, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{source}: the file is empty; expected a header row naming the columns")
    header = [name.strip() for name in header]
    for wanted in [date_column, *names]:
        if wanted not in header:
            raise DataError(f"{source}: no column {wanted!r} in the header (line 1); the columns are "
                            f"{', '.join(map(repr, header))}; pass one of them as "
                            f"{'date_column' if wanted == date_column else 'value_columns'}=")
    date_at = header.index(date_column)
    value_at = [header.index(name) for name in names]
    need = max(date_at, *value_at) + 1
    tokens = set(missing_values)
    dates, rows, lines = [], [], []
    previous = None
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < need:
            raise DataError(f"{source}, line {line}: {len(row)} field(s), expected at least {need} for the columns "
                            f"{[date_column, *names]}; repair or remove the line")
        date_text = row[date_at].strip()
        if parse_dates:
            try:
                date = np.datetime64(date_text)
            except ValueError:
                raise DataError(f"{source}, line {line}, column {date_column!r}: cannot read {date_text!r} as a "
                                "date; expected ISO 8601 such as '1949-01' or '1981-01-01', or pass "
                                "parse_dates=False to keep the dates as text") from None
            if previous is not None and date <= previous:
                raise DataError(f"{source}, line {line}, column {date_column!r}: date {date_text} does not come "
                                f"after the previous row's {previous}; the rows must be in increasing time "
                                "order for a chronological split: sort the file by date and remove duplicates")
            previous = date
            dates.append(date)
        else:
            dates.append(date_text)
        values = []
        for name, at in zip(names, value_at):
            cell = row[at].strip()
            if cell in tokens:
                values.append(math.nan)
                continue
            try:
                number = float(cell)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise DataError(f"{source}, line {line}, column {name!r}: cannot read {cell!r} as a finite number; "
                                f"correct the value, or add it to missing_values= if it marks a missing value "
                                f"(now {list(missing_values)})")
            values.append(number)
        rows.append(values)
        lines.append(line)
    if not rows:
        raise DataError(f"{source}: the header names the columns but there are no data rows")
    values = np.asarray(rows, dtype=np.float64)
    dates_array = np.asarray(dates)
    values, report = handle_missing(values, missing=missing, fill=fill, source=source, columns=names,
                                    positions=lines)
    lines_array = np.asarray(lines)
    if report.dropped:
        keep = ~np.isin(lines_array, report.dropped)
        dates_array, lines_array = dates_array[keep], lines_array[keep]
    return TimeSeries(values, dates_array, names, source, lines_array, report)


def as_matrix(data, columns: str | Sequence[str] | None = None, *, missing: str = "raise",
              fill: str = "forward") -> tuple[np.ndarray, list[str], MissingReport]:
    """``(values (T, F), column names, missing report)`` from a :class:`TimeSeries`, a 1-D or 2-D
    array, a mapping of column name to values, or a dataframe-like object (``data[name]`` gives a
    column, ``data.columns`` lists them). ``columns`` picks and orders columns by name.

    Example::

        values, names, _ = as_matrix({"y": [1.0, 2.0, 3.0]})     # (3, 1), ["y"]
    """
    if isinstance(data, TimeSeries):
        names = list(data.columns) if columns is None else _names(columns)
        values = np.stack([data.column(name) for name in names], axis=1)
        report = data.missing
        if np.isnan(values).any():  # a TimeSeries built by hand may still hold NaNs
            values, report = handle_missing(values, missing=missing, fill=fill, source=data.source, columns=names)
        return values, names, report
    if isinstance(data, Mapping) or hasattr(data, "columns"):
        available = [str(name) for name in (data.keys() if isinstance(data, Mapping) else data.columns)]
        names = available if columns is None else _names(columns)
        for name in names:
            if name not in available:
                raise DataError(f"no column {name!r} in the data; the columns are {available}; pass columns= "
                                "naming some of them")
        try:
            values = np.stack([np.asarray(data[name], dtype=np.float64) for name in names], axis=1)
        except (TypeError, ValueError) as error:
            raise DataError(f"the columns {names} could not be read as numbers ({error}); convert them to "
                            "floats first (dates belong in no value column)") from error
    else:
        try:
            values = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise DataError(f"the series could not be read as numbers ({error}); pass a numeric array "
                            "(T,) or (T, F), a TimeSeries or columns of numbers") from error
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise DataError(f"a series must be 1-D (T,) or 2-D (T, F), got shape {values.shape}; for windows "
                            "use make_windows on the series instead")
        names = [str(i) for i in range(values.shape[1])]
        if columns is not None:
            raise ConfigError("columns= picks named columns; a plain array has none: slice the array instead")
    if np.isinf(values).any():
        row, col = (int(i) for i in np.argwhere(np.isinf(values))[0])
        raise DataError(f"the series holds an infinite value at row {row}, column {names[col]!r}; replace it "
                        "with a finite number or NaN (then choose missing=)")
    values, report = handle_missing(values, missing=missing, fill=fill, columns=names)
    return values, names, report


# -- chronological splits -------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """Where a series of ``length`` steps is cut: ``[0, train_end)`` trains, ``[train_end,
    validation_end)`` validates and ``[validation_end, length)`` tests, in time order.

    Example::

        split = chronological_split(144, test=24)
        split.train, split.test          # slice(0, 120), slice(120, 144)
    """

    length: int
    train_end: int
    validation_end: int

    @property
    def train(self) -> slice:
        return slice(0, self.train_end)

    @property
    def validation(self) -> slice:
        return slice(self.train_end, self.validation_end)

    @property
    def test(self) -> slice:
        return slice(self.validation_end, self.length)

    def apply(self, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(train, validation, test)`` parts of ``values`` (first axis is time)."""
        values = np.asarray(values)
        if len(values) != self.length:
            raise DataError(f"the split was made for a series of {self.length} steps, got {len(values)}; make "
                            "the split with chronological_split(len(values), ...) for these values")
        return values[self.train], values[self.validation], values[self.test]


def part_size(amount: int | float, length: int, argument: str) -> int:
    """Steps meant by ``amount``: a count (int >= 0) or a fraction of ``length`` (float in [0, 1),
    rounded to the nearest step)."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{argument}= must be a count (int) or a fraction (float in [0, 1)), got {amount!r}")
    if isinstance(amount, (int, np.integer)):
        if amount < 0:
            raise ConfigError(f"{argument}={amount} is negative; pass a count >= 0")
        return int(amount)
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"{argument}={amount} is not a fraction in [0, 1); pass e.g. 0.1, or an int count of steps")
    return int(round(amount * length))


def chronological_split(length: int, *, validation: int | float = 0, test: int | float = 0.2) -> Split:
    """Cut a series of ``length`` steps into train, validation and test parts, in that time order.

    ``validation`` and ``test``: counts (int) or fractions of ``length`` (float in [0, 1)). The
    parts are contiguous and never shuffled: the test part is the last stretch of the series.

    Example::

        chronological_split(2820, test=0.1)            # Split(length=2820, train_end=2538, validation_end=2538)
        chronological_split(144, validation=12, test=24).validation   # slice(108, 120)
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ConfigError(f"length= must be the number of time steps (an int >= 1), got {length!r}; "
                          "pass len(values)")
    test_steps = part_size(test, length, "test")
    validation_steps = part_size(validation, length, "validation")
    train_steps = length - test_steps - validation_steps
    if train_steps < 1:
        raise ConfigError(f"validation={validation!r} ({validation_steps} steps) and test={test!r} ({test_steps} "
                          f"steps) leave no training steps out of {length}; make them smaller")
    return Split(int(length), train_steps, train_steps + validation_steps)


# -- windows --------------------------------------------------------------------------------------

@dataclass
class Windows:
    """Sliding windows over a series.

    ``x``: ``(N, lookback, F)`` inputs; ``y``: ``(N, horizon, k)`` targets (``(N, horizon * k)``
    when flat); ``target_index``: ``(N,)`` the series index of each window's first target step, so
    window ``i`` reads ``values[target_index[i] - lookback : target_index[i]]`` and predicts
    ``values[target_index[i] : target_index[i] + horizon, targets]``.
    """

    x: np.ndarray
    y: np.ndarray
    target_index: np.ndarray
    lookback: int
    horizon: int
    targets: list[int]

    def __len__(self) -> int:
        return len(self.x)


def _positive_int(value, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{argument}= must be an int >= 1, got {value!r}")
    return int(value)


def target_columns(targets: int | Sequence[int] | None, features: int) -> list[int]:
    """Column indices of the targets: all columns for None; an int or a sequence of ints."""
    if targets is None:
        return list(range(features))
    chosen = [targets] if isinstance(targets, (int, np.integer)) else list(targets)
    for index in chosen:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < features:
            raise ConfigError(f"targets= holds {index!r}; expected column indices in [0, {features}) of the "
                              f"{features}-column series")
    if not chosen:
        raise ConfigError("targets= is empty; name at least one column to forecast")
    return [int(i) for i in chosen]


def windows_at(values: np.ndarray, target_index: np.ndarray, lookback: int, horizon: int,
               targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(x (N, lookback, F), y (N, horizon, k))`` for the given first-target indices (no checks
    beyond numpy's; :func:`make_windows` is the checked entry point)."""
    target_index = np.asarray(target_index, dtype=np.int64)
    steps = np.arange(-lookback, 0)[None, :] + target_index[:, None]
    ahead = np.arange(horizon)[None, :] + target_index[:, None]
    return values[steps], values[ahead][:, :, list(targets)]


def make_windows(values, lookback: int, horizon: int = 1, *, stride: int = 1,
                 targets: int | Sequence[int] | None = None, flat: bool = False, start: int = 0,
                 end: int | None = None) -> Windows:
    """Sliding windows of ``lookback`` input steps and ``horizon`` target steps over ``values``.

    ``values``: ``(T,)`` or ``(T, F)``. The windows are those whose targets all lie in
    ``values[start:end]`` (inputs may reach back before ``start``: that is how test windows read the
    history before the test part), the first one as early as possible, then every ``stride`` steps.
    ``targets``: the columns to forecast (default all). ``flat=True`` gives ``y`` as
    ``(N, horizon * k)``, the shape a ``Dense(horizon * k)`` head predicts.

    Raises DataError when the series (or the part ``start:end``) is shorter than one window, with
    its length and the needed length.

    Example (the literal case the tests check)::

        w = make_windows(np.arange(6.0), lookback=3, horizon=2)
        w.x[..., 0]   # [[0, 1, 2], [1, 2, 3]]
        w.y[..., 0]   # [[3, 4], [4, 5]]
    """
    lookback = _positive_int(lookback, "lookback")
    horizon = _positive_int(horizon, "horizon")
    stride = _positive_int(stride, "stride")
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise DataError(f"values must be a series (T,) or (T, F), got shape {values.shape}")
    length = len(values)
    end = length if end is None else int(end)
    if not 0 <= start <= end <= length:
        raise ConfigError(f"start={start} and end={end} must satisfy 0 <= start <= end <= {length} (the series' "
                          "length)")
    needed = lookback + horizon
    if length < needed:
        raise DataError(f"the series has {length} time steps but one window needs lookback + horizon = "
                        f"{lookback} + {horizon} = {needed}; use a longer series or a smaller lookback/horizon")
    first = max(start, lookback)
    last = end - horizon
    if last < first:
        raise DataError(f"no window fits: targets must lie in steps [{start}, {end}) ({end - start} steps) with "
                        f"{lookback} steps of history before each; the span needs at least {horizon} steps after "
                        f"step {first} (it has {max(end - first, 0)}). Widen the span or shorten horizon/lookback")
    chosen = target_columns(targets, values.shape[1])
    target_index = np.arange(first, last + 1, stride)
    x, y = windows_at(values, target_index, lookback, horizon, chosen)
    if flat:
        y = y.reshape(len(y), -1)
    return Windows(x, y, target_index, lookback, horizon, chosen)


# -- scaling --------------------------------------------------------------------------------------

class SeriesScaler:
    """Per-column scaling of a series ``(T, F)`` by scikit-learn's ``StandardScaler`` ("standard":
    ``(v - mean) / std``), ``MinMaxScaler`` ("minmax": to [0, 1]) or nothing ("none").

    Fit it on the training part only, so that no statistic of validation or test data leaks into
    the model's inputs. ``inverse_transform(values, columns=...)`` undoes the scaling of a subset
    of columns (e.g. forecasts ``(N, horizon, k)`` of the target columns).

    Example::

        scaler = SeriesScaler("standard").fit(values[split.train])
        scaled = scaler.transform(values)                        # (T, F)
        scaler.inverse_transform(scaled[:, [0]], columns=[0])    # back in original units
    """

    def __init__(self, kind: str = "standard") -> None:
        _check_choice("scaler", kind, SCALER_KINDS)
        self.kind = kind
        self.scaler = None
        self.features: int | None = None

    def _sklearn(self):
        from sklearn.preprocessing import MinMaxScaler, StandardScaler
        return {"standard": StandardScaler, "minmax": MinMaxScaler}[self.kind]()

    def fit(self, values) -> "SeriesScaler":
        values = _as_2d(values, "fit")
        if len(values) < 2:
            raise DataError(f"the scaler needs at least 2 training steps, got {len(values)}; use a longer "
                            "training part")
        self.features = values.shape[1]
        if self.kind != "none":
            self.scaler = self._sklearn().fit(values)
        return self

    @property
    def fitted(self) -> bool:
        return self.features is not None

    def _check(self, values: np.ndarray, columns: Sequence[int] | None, method: str) -> list[int]:
        if not self.fitted:
            raise ConfigError(f"SeriesScaler.{method}() before fit(); fit it on the training part first")
        columns = list(range(self.features)) if columns is None else list(columns)
        if values.shape[-1] != len(columns):
            raise DataError(f"SeriesScaler.{method}: the last axis has {values.shape[-1]} columns, expected "
                            f"{len(columns)} (columns={columns} of the {self.features} it was fitted on)")
        return columns

    def _apply(self, values, columns, method: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        columns = self._check(values, columns, method)
        if self.kind == "none":
            return values.copy()
        # sklearn's scalers act column by column: place the chosen columns in a full-width array
        flat = values.reshape(-1, len(columns))
        full = np.zeros((len(flat), self.features))
        full[:, columns] = flat
        result = getattr(self.scaler, method)(full)[:, columns]
        return result.reshape(values.shape)

    def transform(self, values, columns: Sequence[int] | None = None) -> np.ndarray:
        """Scale ``values`` ``(..., len(columns))`` (all fitted columns by default)."""
        return self._apply(values, columns, "transform")

    def inverse_transform(self, values, columns: Sequence[int] | None = None) -> np.ndarray:
        """Undo :meth:`transform`: ``(..., len(columns))`` back in original units."""
        return self._apply(values, columns, "inverse_transform")

    @property
    def center(self) -> np.ndarray | None:
        """The per-column statistic subtracted: the training mean ("standard") or minimum ("minmax")."""
        if self.scaler is None:
            return None
        return self.scaler.mean_ if self.kind == "standard" else self.scaler.data_min_

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: the kind, sklearn's parameters and its fitted attributes."""
        state: dict[str, Any] = {"kind": self.kind, "features": self.features}
        if self.scaler is not None:
            state["params"] = self.scaler.get_params()
            state["fitted"] = {name: (value.tolist() if isinstance(value, np.ndarray) else
                                      value.item() if isinstance(value, np.generic) else value)
                               for name, value in vars(self.scaler).items()
                               if name.endswith("_") and not name.startswith("_")}
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "SeriesScaler":
        scaler = cls(state["kind"])
        scaler.features = state.get("features")
        if "fitted" in state:
            scaler.scaler = scaler._sklearn()
            params = dict(state.get("params", {}))
            if "feature_range" in params:
                params["feature_range"] = tuple(params["feature_range"])
            scaler.scaler.set_params(**params)
            for name, value in state["fitted"].items():
                setattr(scaler.scaler, name, np.asarray(value, dtype=np.float64) if isinstance(value, list) else value)
        return scaler


def _as_2d(values, method: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise DataError(f"SeriesScaler.{method}: expected a series (T,) or (T, F), got shape {values.shape}")
    return values


# -- MASE -----------------------------------------------------------------------------------------

def mase_scale(training, period: int = 1) -> np.ndarray:
    """The MASE denominator per column: the in-sample MAE of the seasonal-naive forecast on the
    training part, ``mean_t |y_t - y_{t-m}|`` over ``t = m .. T-1`` (Hyndman & Koehler 2006 with
    ``m = period``; ``period=1`` is the one-step naive forecast, their non-seasonal MASE).

    ``training``: ``(T,)`` or ``(T, k)``; returns ``(k,)``. Raises DataError when ``T <= period``
    or when the scale is 0 (a constant training part: MASE is undefined).

    Example::

        mase_scale(np.array([1.0, 3.0, 2.0, 5.0]), period=1)     # array([2.])  (|2| + |-1| + |3|) / 3
    """
    period = _positive_int(period, "period")
    training = _as_2d(training, "mase_scale")
    if len(training) <= period:
        raise DataError(f"MASE needs a training part longer than the period: got {len(training)} steps for "
                        f"period={period}; use a longer training part or a shorter period")
    scale = np.abs(training[period:] - training[:-period]).mean(axis=0)
    if np.any(scale == 0):
        raise DataError(f"the training part's seasonal differences (period={period}) are all zero in column(s) "
                        f"{np.nonzero(scale == 0)[0].tolist()}: MASE is undefined for a constant series; "
                        "report MAE instead")
    return scale


def mase(y_true, y_pred, training=None, period: int = 1, *, scale=None) -> float:
    """Mean absolute scaled error (Hyndman & Koehler 2006): the forecasts' MAE divided by the
    in-sample MAE of the seasonal-naive forecast (period ``m``) on the training part (see
    :func:`mase_scale`). Below 1: better than the seasonal-naive forecast was in-sample.

    ``y_true``, ``y_pred``: ``(..., k)`` forecasts of k target columns (a 1-D array is one column);
    ``training``: the training part ``(T,)`` or ``(T, k)``, or pass a precomputed ``scale`` ``(k,)``.
    Several columns: the mean of the per-column MASEs.

    Example::

        mase([3.0, 5.0], [4.0, 4.0], training=[1.0, 3.0, 2.0, 5.0])   # 1.0 / 2.0 = 0.5
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise DataError(f"mase: y_true has shape {y_true.shape} but y_pred {y_pred.shape}; they must match")
    if scale is None:
        if training is None:
            raise ConfigError("mase needs training= (the training part of the series) or scale=")
        scale = mase_scale(training, period)
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    columns = 1 if y_true.ndim == 1 else y_true.shape[-1]
    if len(scale) != columns:
        raise DataError(f"mase: {len(scale)} scale value(s) for {columns} target column(s); the training part "
                        "must have the targets' columns")
    errors = np.abs(y_true - y_pred).reshape(-1, columns)
    return float(np.mean(errors.mean(axis=0) / scale))


__all__ = ["TimeSeries", "MissingReport", "read_series", "as_matrix", "handle_missing", "Split",
           "chronological_split", "part_size", "Windows", "make_windows", "windows_at", "target_columns",
           "SeriesScaler", "mase_scale", "mase", "MISSING_TOKENS"]
