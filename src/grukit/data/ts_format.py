"""Reader for the UEA/UCR time-series classification archive's ``.ts`` format.

A ``.ts`` file is ``#`` comment lines, a header of ``@key value`` lines, then ``@data`` and one
case per line::

    @problemName JapaneseVowels
    @univariate false
    @dimensions 12
    @equalLength false
    @classLabel true 1 2 3 4 5 6 7 8 9
    @data
    1.86,1.89,1.93:-0.20,-0.19,-0.23:...:1

Each data line is ``channel_1:channel_2:...:channel_C:label``; the values of a channel are
comma-separated and ``?`` (or ``NaN``) marks a missing value, read as ``nan``. The label field is
present when the header says ``@classLabel true <names...>`` (class labels) or ``@targetLabel true``
(regression targets), absent otherwise. Cases may have different lengths (``@equalLength false``),
but the channels of one case must have the same length.

Not covered: the ``@timeStamps true`` variant, whose values are ``(timestamp,value)`` pairs; it
raises :class:`~grukit.errors.DataError`.

Every error is a :class:`~grukit.errors.DataError` that names the file and the line (1-based, as an
editor counts), what was expected and what was found.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grukit.data._files import decode, read_bytes
from grukit.data.sequences import pad_sequences
from grukit.errors import ConfigError, DataError

MISSING_VALUES = ("?", "nan", "NaN", "NAN")


@dataclass
class TimeSeriesDataset:
    """Variable-length multivariate sequences with their labels, as read from a ``.ts`` file.

    - ``sequences``: list of N float arrays, each ``(T_i, C)`` (time first, channels last, the layout
      ``grukit.nn`` layers take with ``batch_first=True``); missing values are ``nan``.
    - ``labels``: ``(N,)`` int64 class ids (index into ``class_names``), or ``(N,)`` float64 targets
      for a regression file, or ``None`` for an unlabelled file.
    - ``class_names``: the ``@classLabel`` names in header order; id ``k`` is ``class_names[k]``.
    - ``problem_name``, ``header``: the ``@problemName`` and every header key (lower-cased) with its
      raw value.

    Example::

        train = read_ts("JapaneseVowels_TRAIN.ts")
        x, lengths = train.padded()          # (270, 26, 12) float32, (270,) int64
        y = train.labels                     # (270,) int64 in 0..8
    """

    sequences: list[np.ndarray]
    labels: np.ndarray | None
    class_names: tuple[str, ...] = ()
    problem_name: str | None = None
    header: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_channels(self) -> int:
        return self.sequences[0].shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` int64: the number of time steps of each case."""
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    def padded(self, maxlen: int | None = None, value: float = 0.0, dtype="float32") -> tuple[np.ndarray, np.ndarray]:
        """``(x, lengths)``: ``x`` is ``(N, maxlen, C)`` with each case at the start and ``value`` after
        it (post-padding, what ``lengths=`` of the ``grukit.nn`` layers expects); ``lengths`` is ``(N,)``.

        ``maxlen`` defaults to the longest case; a longer case raises ``ConfigError`` instead of being
        cut silently (truncate the ``sequences`` yourself if that is what you want).
        """
        lengths = self.lengths
        if maxlen is not None and int(lengths.max()) > maxlen:
            raise ConfigError(f"padded(maxlen={maxlen}): the longest case has {int(lengths.max())} steps; pass "
                              f"maxlen >= {int(lengths.max())} or None")
        x = pad_sequences(self.sequences, maxlen=maxlen, padding="post", truncating="post", value=value, dtype=dtype)
        return x, lengths


def _parse_bool(source: str, line_number: int, key: str, value: str) -> bool:
    word = value.split()[0].lower() if value.split() else ""
    if word in ("true", "false"):
        return word == "true"
    raise DataError(f"{source}: line {line_number}: @{key} must be 'true' or 'false', got {value!r}")


def _parse_int(source: str, line_number: int, key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 1:
        raise DataError(f"{source}: line {line_number}: @{key} must be a positive integer, got {value!r}")
    return number


def _parse_channel(source: str, line_number: int, channel: int, text: str) -> list[float]:
    values = []
    for position, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if item in MISSING_VALUES:
            values.append(math.nan)
            continue
        try:
            values.append(float(item))
        except ValueError:
            hint = (" (this looks like the @timeStamps format, which is not supported)" if "(" in item else
                    "; write missing values as '?'")
            raise DataError(f"{source}: line {line_number}: channel {channel}, value {position} is {item!r}, "
                            f"expected a number{hint}") from None
    return values


class _Header:
    """The header keys the reader acts on, checked as they are read."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.raw: dict[str, str] = {}
        self.dimensions: int | None = None
        self.equal_length = False
        self.series_length: int | None = None
        self.class_names: tuple[str, ...] | None = None
        self.has_target = False

    def read(self, line_number: int, line: str) -> None:
        key, _, value = line[1:].partition(" ")
        key, value = key.lower(), value.strip()
        self.raw[key] = value
        if key == "timestamps" and _parse_bool(self.source, line_number, key, value):
            raise DataError(f"{self.source}: line {line_number}: @timeStamps true (values as (time,value) pairs) is "
                            "not supported; convert the file to plain comma-separated values")
        if key == "univariate" and _parse_bool(self.source, line_number, key, value):
            self._set_dimensions(line_number, 1, "@univariate true")
        elif key == "dimensions":
            self._set_dimensions(line_number, _parse_int(self.source, line_number, key, value), "@dimensions")
        elif key == "equallength":
            self.equal_length = _parse_bool(self.source, line_number, key, value)
        elif key == "serieslength":
            self.series_length = _parse_int(self.source, line_number, key, value)
        elif key == "classlabel":
            if _parse_bool(self.source, line_number, key, value):
                names = tuple(value.split()[1:])
                if not names:
                    raise DataError(f"{self.source}: line {line_number}: @classLabel true must list the class names "
                                    "after it, e.g. '@classLabel true 1 2 3'")
                if len(set(names)) != len(names):
                    raise DataError(f"{self.source}: line {line_number}: @classLabel lists a class twice: "
                                    f"{' '.join(names)}")
                self.class_names = names
        elif key == "targetlabel":
            self.has_target = _parse_bool(self.source, line_number, key, value)

    def _set_dimensions(self, line_number: int, dimensions: int, what: str) -> None:
        if self.dimensions is not None and self.dimensions != dimensions:
            raise DataError(f"{self.source}: line {line_number}: {what} says {dimensions} channel(s) but an earlier "
                            f"header line says {self.dimensions}; make them agree")
        self.dimensions = dimensions


def parse_ts(text: str, source: str = "<text>") -> TimeSeriesDataset:
    """Parse the content of a ``.ts`` file (see :func:`read_ts`); ``source`` names it in errors."""
    header = _Header(source)
    sequences: list[np.ndarray] = []
    labels: list = []
    in_data = False
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{source}: line {line_number}: expected a '@key value' header line or '@data' before "
                                f"the data, found {line[:40]!r}")
            if line.lower() == "@data":
                in_data = True
            else:
                header.read(line_number, line)
            continue
        sequences.append(_parse_case(header, line_number, line, labels))
    if not in_data:
        raise DataError(f"{source}: no '@data' line; a .ts file has a header, then '@data', then one case per line")
    if not sequences:
        raise DataError(f"{source}: the data section after '@data' is empty; expected one case per line")
    if header.class_names is not None:
        label_array = np.array(labels, dtype=np.int64)
    elif header.has_target:
        label_array = np.array(labels, dtype=np.float64)
    else:
        label_array = None
    return TimeSeriesDataset(sequences, label_array, header.class_names or (), header.raw.get("problemname"),
                             header.raw)


def _parse_case(header: _Header, line_number: int, line: str, labels: list) -> np.ndarray:
    source = header.source
    fields = line.split(":")
    labelled = header.class_names is not None or header.has_target
    if labelled:
        if len(fields) < 2:
            raise DataError(f"{source}: line {line_number}: expected 'channel:...:label' but the line has no ':'; "
                            "the header announces a label")
        label_text = fields.pop().strip()
        if header.class_names is not None:
            if label_text not in header.class_names:
                raise DataError(f"{source}: line {line_number}: label {label_text!r} is not in @classLabel "
                                f"({' '.join(header.class_names)}); add it to the header or fix the line")
            labels.append(header.class_names.index(label_text))
        else:
            try:
                labels.append(float(label_text))
            except ValueError:
                raise DataError(f"{source}: line {line_number}: target {label_text!r} is not a number "
                                "(@targetLabel true)") from None
    if header.dimensions is None:  # neither @dimensions nor @univariate: the first case decides
        header.dimensions = len(fields)
    if len(fields) != header.dimensions:
        label_note = " plus the label" if labelled else ""
        raise DataError(f"{source}: line {line_number}: {len(fields)} channel(s){label_note}, but the header says "
                        f"@dimensions {header.dimensions}; each channel is a ':'-separated field")
    channels = [_parse_channel(source, line_number, c, text) for c, text in enumerate(fields, start=1)]
    lengths = [len(c) for c in channels]
    if len(set(lengths)) != 1:
        shown = ", ".join(f"channel {c}: {n}" for c, n in enumerate(lengths, start=1))
        raise DataError(f"{source}: line {line_number}: the channels of this case have different lengths ({shown}); "
                        "all channels of one case must have the same number of values")
    expected = header.series_length if header.equal_length else None
    if expected is not None and lengths[0] != expected:
        raise DataError(f"{source}: line {line_number}: {lengths[0]} values per channel, but the header says "
                        f"@equalLength true and @seriesLength {expected}")
    return np.array(channels, dtype=np.float64).T.copy()


def read_ts(path: str | os.PathLike, encoding: str = "utf-8") -> TimeSeriesDataset:
    """Read a UEA/UCR ``.ts`` file (optionally gzip-compressed) into a :class:`TimeSeriesDataset`.

    Returns sequences as a list of ``(T_i, C)`` float64 arrays (``.padded()`` gives ``(N, T_max, C)``
    plus ``(N,)`` lengths), labels as int64 ids into ``class_names`` (the ``@classLabel`` order), so a
    TRAIN and a TEST file with the same header share ids.

    Raises :class:`~grukit.errors.DataError` naming the file and line for: bytes that are not valid
    ``encoding``; channels of one case with different lengths; a case with a different number of
    channels than ``@dimensions``; a label missing from ``@classLabel``; a value that is not a number;
    no ``@data`` line or nothing after it.

    Example::

        train = read_ts("../shared/data/japanese-vowels/JapaneseVowels_TRAIN.ts")
        len(train), train.num_channels, train.class_names   # 270, 12, ('1', ..., '9')
    """
    path = Path(path)
    return parse_ts(decode(read_bytes(path), str(path), encoding), str(path))


__all__ = ["TimeSeriesDataset", "read_ts", "parse_ts"]
