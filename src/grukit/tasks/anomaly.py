"""Anomaly detection on series with a recurrent network, scored beside simple baselines.

``AnomalyDetector`` learns what normal looks like from a series ``(T, F)`` (univariate or
multivariate) and gives every time step an anomaly score, the squared error (in scaled units,
averaged over the F columns) of one of two models, chosen by ``method=``:

* ``"forecast"``: ``Sequential([Input((window, F)), GRU(units), Dense(horizon * F)])`` forecasts
  the next ``horizon`` steps of every column from the last ``window`` steps. Step t's score is the
  mean squared forecast error of t over the (up to ``horizon``) windows that forecast it. Causal:
  a score uses only the steps before t, so it can run online. The first ``window`` steps have no
  score (NaN).
* ``"reconstruction"``: a sequence autoencoder, ``Sequential([Input((window, F)), GRU(units),
  RepeatVector(window), GRU(units, return_sequences=True), TimeDistributed(Dense(F))])``: the
  encoder squeezes a window into one state, the decoder rebuilds the window from it. Step t's score
  is the mean squared reconstruction error of t over all windows (stride 1) that contain it. Not
  causal: a window also holds steps after t. Every step has a score.

The recurrent layer is ``cell=`` "gru", "lstm", "rnn", "mgu" or "mingru" (both GRUs of the
autoencoder).

**Threshold** (calibrated on normal data only). ``fit(data)`` treats ``data`` as normal: it trains on
the first part and holds out the last ``calibration`` part (a count or fraction, default 0.2),
never trained on, whose step scores set the threshold (with ``calibration=0`` the training part's
own scores are used, which are optimistic: expect more false alarms). Steps labelled anomalous in
``fit(data, labels)`` are left out of training windows and of calibration. The rule:

* ``threshold_rule="quantile"`` (default): ``numpy.quantile(scores, quantile)`` (linear
  interpolation), ``quantile=0.99``: about 1% of normal steps are flagged;
* ``threshold_rule="mean_std"``: ``mean(scores) + k * std(scores)`` (population std), ``k=3``.

A step is anomalous when its score is strictly above the threshold. ``calibrate(normal_data)``
recomputes the thresholds from other normal data.

**Evaluation** is per time step: ``evaluate(data, labels)`` takes one 0/1 label per step (1 =
anomalous) and reports precision, recall and F1 of the flags and ROC-AUC of the scores
(scikit-learn, through :mod:`grukit.train.metrics`: ROC-AUC is NaN when the scored steps hold one
class only, precision/recall are 0 rather than undefined), for the model and two baselines with
thresholds calibrated on the same normal steps by the same rule:

* rolling z-score: ``|x_t - mean| / std`` of the ``baseline_window`` steps before t (RMS over columns);
* seasonal-naive error: ``(x_t - x_{t-season})^2`` (``season=1``: the last value), the forecast of
  :func:`grukit.tasks.baselines.seasonal_naive`.

Only the steps every detector scores are counted, so all rows of the table see the same steps.
:func:`inject_anomalies` adds documented synthetic anomalies (spikes, level shifts, flat lines) to a
real series with a seeded generator, for an honest evaluation when no labelled anomalies exist.

Example::

    from grukit.tasks import AnomalyDetector, inject_anomalies

    detector = AnomalyDetector(method="forecast", window=30, epochs=20).fit(temperatures[:2555])
    test = inject_anomalies(temperatures, spikes=8, level_shifts=4, flat_lines=4, start=2555, seed=0)
    result = detector.evaluate(test.values, test.labels, test=len(temperatures) - 2555)
    print(result.table())                      # GRU beside rolling z-score and naive error
    detector.predict(series)                   # (T,) 0/1 flags
    detector.save("runs/anomaly"); AnomalyDetector.load("runs/anomaly")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grukit import layers
from grukit.data.timeseries import (SeriesScaler, TimeSeries, as_matrix, chronological_split, make_windows,
                                    part_size)
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.layers import RepeatVector
from grukit.models import Sequential
from grukit.tasks.base import ConfigRecord, Task, cell_class, check_seed, recurrent_layer
from grukit.tasks.baselines import seasonal_naive
from grukit.train import Adam
from grukit.train.loop import check_precision
from grukit.train.losses import get_loss
from grukit.train.metrics import get_metric

METHODS = ("forecast", "reconstruction")
THRESHOLD_RULES = ("quantile", "mean_std")
DETECTORS = ("model", "rolling_zscore", "seasonal_naive")
SCORE_NAMES = ("precision", "recall", "f1", "roc_auc")
_STD_FLOOR = 1e-6  # rolling std in scaled units: a flat stretch must not divide by zero




# -- configuration --------------------------------------------------------------------------------

@dataclass
class AnomalyConfig(ConfigRecord):
    """Everything that defines an AnomalyDetector (saved in ``task.json``).

    ``method``: "forecast" or "reconstruction"; ``window``: the steps a window holds (the forecast's
    lookback, the autoencoder's window); ``horizon``: steps forecast at once (forecast only);
    ``cell``/``units``: the recurrent layer; ``threshold_rule``: "quantile" (``quantile``) or
    "mean_std" (``k``); ``calibration``: the last part of the fit data (count or fraction) held out
    to calibrate the thresholds, 0 to calibrate on the training part; ``baseline_window``: the
    rolling z-score's window (default ``window``); ``season``: the seasonal-naive baseline's period;
    ``scaler``: "standard", "minmax" or "none", fitted on the training part; ``epochs``,
    ``batch_size``, ``learning_rate`` (Adam), ``stride`` (between training windows); ``columns``:
    the value columns of named data (default all); ``missing``/``fill``: see
    :func:`grukit.data.timeseries.handle_missing`; ``seed``; ``cell_options``: extra arguments of the
    recurrent layers.
    ``precision``: "float32", or "mixed_bfloat16" to train the recurrent layer in grukit's bfloat16
    mode (``fit(precision=...)``; fast on CPUs with BF16 units); predictions run in float32.
    """

    method: str = "forecast"
    window: int = 32
    horizon: int = 1
    cell: str = "gru"
    units: int = 32
    threshold_rule: str = "quantile"
    quantile: float = 0.99
    k: float = 3.0
    calibration: int | float = 0.2
    baseline_window: int | None = None
    season: int = 1
    scaler: str = "standard"
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    stride: int = 1
    columns: list[str] | None = None
    missing: str = "raise"
    fill: str = "forward"
    seed: int = 0
    verbose: int = 0
    precision: str = "float32"
    cell_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision, "AnomalyDetector")
        if self.method not in METHODS:
            raise ConfigError(f"AnomalyDetector(method={self.method!r}) is not known; use 'forecast' (forecast "
                              "error) or 'reconstruction' (sequence-autoencoder error)")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"AnomalyDetector(threshold_rule={self.threshold_rule!r}) is not known; use "
                              "'quantile' (with quantile=) or 'mean_std' (with k=)")
        for name in ("window", "horizon", "units", "season", "epochs", "batch_size", "stride"):
            _positive_int(getattr(self, name), f"AnomalyDetector({name}=...)")
        if self.baseline_window is not None:
            _positive_int(self.baseline_window, "AnomalyDetector(baseline_window=...)")
        if not 0.0 < float(self.quantile) < 1.0:
            raise ConfigError(f"AnomalyDetector(quantile={self.quantile!r}): expected a fraction in (0, 1), "
                              "e.g. 0.99 to flag about 1% of normal steps")
        if not (np.isfinite(self.k) and self.k >= 0):
            raise ConfigError(f"AnomalyDetector(k={self.k!r}): expected a finite number >= 0 (threshold = "
                              "mean + k * std of the normal scores)")
        part_size(self.calibration, 100, "calibration")
        cell_class(self.cell)
        SeriesScaler(self.scaler)
        if isinstance(self.columns, str):
            self.columns = [self.columns]



def _positive_int(value, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{argument}: expected an int >= 1, got {value!r}")
    return int(value)


# -- thresholds, labels, baselines ----------------------------------------------------------------

def threshold_from_scores(scores, rule: str = "quantile", quantile: float = 0.99, k: float = 3.0) -> float:
    """The threshold of normal-data ``scores`` (1-D; NaNs are ignored): ``numpy.quantile(scores,
    quantile)`` for ``rule="quantile"``, ``mean + k * std`` (population std) for ``rule="mean_std"``.

    Example::

        threshold_from_scores([1.0, 2.0, 3.0, 4.0], "quantile", quantile=0.5)    # 2.5
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise DataError("no normal-data scores to calibrate the threshold on; pass a longer normal series (the "
                        "steps after the first window get scores) or fewer labelled anomalies")
    if rule == "quantile":
        return float(np.quantile(scores, quantile))
    if rule == "mean_std":
        return float(scores.mean() + k * scores.std())
    raise ConfigError(f"rule={rule!r} is not known; use 'quantile' or 'mean_std'")


def check_labels(labels, length: int, what: str) -> np.ndarray:
    """Per-step labels as an ``(T,)`` int8 array of 0 (normal) and 1 (anomalous), checked against the
    series' length ``T``."""
    try:
        array = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{what}: labels= could not be read as numbers ({error}); pass one 0/1 label per "
                        "time step") from error
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (length,):
        raise ShapeError(f"{what}: labels= must hold one 0/1 label per time step, shape ({length},), got "
                         f"{array.shape}; label every step of the series (1 = anomalous)")
    bad = ~np.isin(array, (0.0, 1.0))
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{what}: labels= must be 0 (normal) or 1 (anomalous), got {array[first]:g} at step "
                        f"{first}; map the labels to 0/1 (or bool)")
    return array.astype(np.int8)


def _series_and_scores(values) -> tuple[np.ndarray, np.ndarray]:
    """``(values (T, F) float64, scores (T,) all NaN)`` for a baseline to fill in."""
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    return values, np.full(len(values), np.nan)


def rolling_zscore_scores(values, window: int) -> np.ndarray:
    """Rolling z-score baseline, ``(T,)``: at step t >= window, ``sqrt(mean_f z_f^2)`` with
    ``z_f = (x_tf - mean) / max(std, 1e-6)`` over the ``window`` steps before t (population std);
    NaN for the first ``window`` steps. ``values``: ``(T,)`` or ``(T, F)``, best in scaled units.

    Example::

        rolling_zscore_scores(np.array([0.0, 1.0, 0.0, 1.0, 9.0]), window=4)[4]     # 17.0
    """
    window = _positive_int(window, "rolling_zscore_scores(window=...)")
    values, scores = _series_and_scores(values)
    if len(values) <= window:
        return scores
    past = np.lib.stride_tricks.sliding_window_view(values[:-1], window, axis=0)   # (T - window, F, window)
    z = (values[window:] - past.mean(axis=-1)) / np.maximum(past.std(axis=-1), _STD_FLOOR)
    scores[window:] = np.sqrt((z ** 2).mean(axis=1))
    return scores


def seasonal_naive_scores(values, season: int = 1) -> np.ndarray:
    """Seasonal-naive forecast-error baseline, ``(T,)``: ``mean_f (x_tf - x_{t-season, f})^2`` at step
    t >= season (the one-step forecast of :func:`grukit.tasks.baselines.seasonal_naive`), NaN before.

    Example::

        seasonal_naive_scores(np.array([1.0, 2.0, 4.0]), season=1)      # [nan, 1, 4]
    """
    season = _positive_int(season, "seasonal_naive_scores(season=...)")
    values, scores = _series_and_scores(values)
    if len(values) <= season:
        return scores
    windows = make_windows(values, lookback=season, horizon=1)
    forecast = seasonal_naive(windows.x, horizon=1, period=season)
    scores[windows.target_index] = ((forecast - windows.y) ** 2).mean(axis=(1, 2))
    return scores


# -- synthetic anomalies --------------------------------------------------------------------------

@dataclass
class InjectedAnomalies:
    """A series with synthetic anomalies: ``values`` ``(T, F)`` (a changed copy), ``labels`` ``(T,)``
    int8 (1 on every changed step) and ``events``: one dict per anomaly with ``kind``, ``start``,
    ``length``, ``column`` and ``size`` (in units of the column's scale; 0 for flat lines)."""

    values: np.ndarray
    labels: np.ndarray
    events: list[dict[str, Any]]

    def kind_labels(self, kind: str) -> np.ndarray:
        """``(T,)`` bool: the steps changed by anomalies of one kind."""
        mask = np.zeros(len(self.labels), dtype=bool)
        for event in self.events:
            if event["kind"] == kind:
                mask[event["start"]:event["start"] + event["length"]] = True
        return mask


def inject_anomalies(values, *, spikes: int = 0, level_shifts: int = 0, flat_lines: int = 0, start: int = 0,
                     end: int | None = None, spike_size: tuple[float, float] = (3.0, 5.0),
                     shift_size: tuple[float, float] = (1.5, 3.0), segment_length: tuple[int, int] = (5, 15),
                     gap: int = 10, scale=None, seed: int = 0) -> InjectedAnomalies:
    """Add synthetic anomalies to ``values[start:end]`` ``(T,)`` or ``(T, F)``, placed at random without
    overlap (at least ``gap`` clean steps between two), with ``numpy.random.default_rng(seed)``:

    * spike: one step moved by ``+-s * scale`` with ``s`` uniform in ``spike_size``;
    * level shift: a segment (length uniform in ``segment_length``, inclusive) moved by ``+-s * scale``,
      ``s`` uniform in ``shift_size``;
    * flat line: a segment stuck at the value of the step before it (a frozen sensor).

    Each anomaly hits one column, chosen at random; the sign is random. ``scale``: per column
    ``(F,)``, default the std of ``values[:start]`` (the clean part; the whole series when start is 0).
    Returns :class:`InjectedAnomalies`.

    Example::

        test = inject_anomalies(series, spikes=8, level_shifts=4, flat_lines=4, start=2555, seed=0)
        test.values.shape, int(test.labels.sum()), test.events[0]["kind"]
    """
    array = np.array(values, dtype=np.float64)
    series = array[:, None] if array.ndim == 1 else array
    if series.ndim != 2:
        raise ShapeError(f"inject_anomalies: values must be (T,) or (T, F), got shape {array.shape}")
    length = len(series)
    end = length if end is None else int(end)
    if not 0 <= start < end <= length:
        raise ConfigError(f"inject_anomalies: start={start} and end={end} must satisfy 0 <= start < end <= "
                          f"{length} (the series' length)")
    low, high = (int(v) for v in segment_length)
    if not 1 <= low <= high:
        raise ConfigError(f"inject_anomalies(segment_length={segment_length!r}): expected (low, high) with "
                          "1 <= low <= high")
    if scale is None:
        reference = series[:start] if start >= 2 else series
        scale = reference.std(axis=0)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (series.shape[1],))
    rng = np.random.default_rng(check_seed(seed, "inject_anomalies"))
    kinds = ["spike"] * spikes + ["level_shift"] * level_shifts + ["flat_line"] * flat_lines
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    taken = np.zeros(length, dtype=bool)
    labels = np.zeros(length, dtype=np.int8)
    events = []
    for kind in kinds:
        size = 1 if kind == "spike" else int(rng.integers(low, high + 1))
        first_allowed = max(start, 1) if kind == "flat_line" else start
        for _attempt in range(1000):
            begin = int(rng.integers(first_allowed, end - size + 1)) if end - size >= first_allowed else -1
            if begin >= 0 and not taken[max(begin - gap, 0):begin + size + gap].any():
                break
        else:
            raise ConfigError(f"inject_anomalies: no room for {len(kinds)} non-overlapping anomalies with gap="
                              f"{gap} in steps [{start}, {end}); ask for fewer, or a smaller gap or segment_length")
        column = int(rng.integers(series.shape[1]))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if kind == "flat_line":
            magnitude = 0.0
            series[begin:begin + size, column] = series[begin - 1, column]
        else:
            magnitude = float(rng.uniform(*(spike_size if kind == "spike" else shift_size)))
            series[begin:begin + size, column] += sign * magnitude * scale[column]
        taken[begin:begin + size] = True
        labels[begin:begin + size] = 1
        events.append({"kind": kind, "start": begin, "length": size, "column": column,
                       "size": round(sign * magnitude, 4)})
    events.sort(key=lambda event: event["start"])
    return InjectedAnomalies(series if array.ndim == 2 else series[:, 0], labels, events)


# -- evaluation -----------------------------------------------------------------------------------

@dataclass
class AnomalyEvaluation:
    """Per-time-step scores of the detector and the baselines on the same steps.

    ``scores``: ``{"model" | "rolling_zscore" | "seasonal_naive": {"precision", "recall", "f1",
    "roc_auc", "threshold", "flagged"}}``; ``steps``: ``(n,)`` the indices of the scored steps;
    ``labels``: ``(n,)`` their labels; ``step_scores`` and ``flags``: per detector, ``(n,)`` scores and
    0/1 flags on those steps.
    """

    scores: dict[str, dict[str, float]]
    steps: np.ndarray
    labels: np.ndarray
    step_scores: dict[str, np.ndarray]
    flags: dict[str, np.ndarray]
    model_name: str
    season: int
    baseline_window: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "steps": int(len(self.steps)), "anomalous_steps": int(self.labels.sum()),
                "first_step": int(self.steps[0]) if len(self.steps) else None, "scores": self.scores}

    def table(self) -> str:
        """A markdown table: one row per detector, precision, recall, F1, ROC-AUC, steps flagged."""
        names = {"model": self.model_name, "rolling_zscore": f"rolling z-score (window {self.baseline_window})",
                 "seasonal_naive": ("last-value" if self.season == 1 else f"seasonal-naive (m={self.season})")
                 + " forecast error"}
        lines = ["| detector | precision | recall | F1 | ROC-AUC | steps flagged |", "|---|---:|---:|---:|---:|---:|"]
        for key, score in self.scores.items():
            lines.append(f"| {names.get(key, key)} | {score['precision']:.3f} | {score['recall']:.3f} | "
                         f"{score['f1']:.3f} | {score['roc_auc']:.3f} | {int(score['flagged'])} |")
        return "\n".join(lines)


def detection_scores(labels, flags, scores) -> dict[str, float]:
    """``{"precision", "recall", "f1", "roc_auc"}`` of 0/1 ``flags`` and real ``scores`` against 0/1
    ``labels`` (all ``(n,)``), by scikit-learn through :func:`grukit.train.metrics.get_metric`:
    precision/recall are 0 when undefined, ROC-AUC is NaN when ``labels`` hold one class only.

    Example::

        detection_scores([0, 1, 1, 0], [0, 1, 0, 1], [0.1, 0.9, 0.4, 0.6])["f1"]      # 0.5
    """
    labels = np.asarray(labels, dtype=np.float64)
    loss = get_loss("binary_crossentropy")  # the registry reads one-column outputs as binary scores
    result = {name: get_metric(name, loss)(labels, np.asarray(flags, dtype=np.float64))
              for name in ("precision", "recall", "f1")}
    result["roc_auc"] = get_metric("auc", loss)(labels, np.asarray(scores, dtype=np.float64))
    return result


# -- the detector ---------------------------------------------------------------------------------

class AnomalyDetector(Task):
    """Anomaly scores from a recurrent forecaster or sequence autoencoder, with a threshold calibrated
    on normal data: ``AnomalyDetector(method="forecast", window=32, cell="gru", units=32, ...)`` (the
    arguments of :class:`AnomalyConfig`; the module docstring has the details).

    Shapes: ``fit``, ``score``, ``predict``, ``evaluate`` take a series ``(T, F)`` (or ``(T,)``, a
    TimeSeries, a mapping or dataframe-like of named columns); ``score`` returns ``(T,)`` floats (NaN
    where a step has no score), ``predict`` ``(T,)`` int8 flags (1 = anomalous, 0 also where there is
    no score); labels are ``(T,)`` 0/1. The network reads windows ``(N, window, F)``.

    Example::

        detector = AnomalyDetector(method="reconstruction", window=16, units=16, epochs=10)
        detector.fit(normal_series)            # (T, F)
        detector.threshold                     # the 0.99 quantile of the held-out normal scores
        detector.predict(new_series)           # (T',) 0/1
    """

    def __init__(self, method: str = "forecast", window: int = 32, cell: str = "gru", units: int = 32,
                 **options) -> None:
        self.config = AnomalyConfig(method=method, window=window, cell=cell, units=units, **options)
        self.model: Sequential | None = None
        self.scaler: SeriesScaler | None = None
        self.columns: list[str] | None = None
        self.columns_named = False
        self.threshold: float | None = None
        self.baseline_thresholds: dict[str, float] = {}
        self.calibration_steps: int | None = None
        self.history = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AnomalyDetector":
        return cls(**AnomalyConfig.from_dict(config).to_dict())

    @property
    def span(self) -> int:
        """Steps one window covers: window + horizon (forecast) or window (reconstruction)."""
        config = self.config
        return config.window + (config.horizon if config.method == "forecast" else 0)

    @property
    def baseline_window(self) -> int:
        return self.config.baseline_window or self.config.window

    # -- data --------------------------------------------------------------------------------
    def _values(self, data, what: str) -> np.ndarray:
        config = self.config
        named = isinstance(data, (TimeSeries, dict)) or hasattr(data, "columns")
        columns = (self.columns if what != "fit" and self.columns_named else config.columns) if named else None
        values, names, _ = as_matrix(data, columns, missing=config.missing, fill=config.fill)
        if what == "fit":
            self.columns, self.columns_named = names, named
        elif values.shape[1] != len(self.columns):
            raise ShapeError(f"AnomalyDetector.{what}: the series has {values.shape[1]} column(s), the detector was "
                             f"fitted on {len(self.columns)} {self.columns}; pass the same columns")
        if len(values) < self.span:
            raise DataError(f"AnomalyDetector.{what}: the series has {len(values)} time steps, shorter than one "
                            f"window ({self._span_text()}); pass a longer series or a smaller window")
        return values

    def _span_text(self) -> str:
        config = self.config
        if config.method == "forecast":
            return f"window + horizon = {config.window} + {config.horizon} = {self.span} steps"
        return f"window = {config.window} steps"

    def _windows(self, scaled: np.ndarray, start: int, end: int, stride: int = 1):
        """``(x (N, window, F), y, steps (N, s))`` for the windows whose steps all lie in ``[start, end)``
        (forecast: its targets; the inputs reach back before start), ``steps`` the scored steps of each."""
        config = self.config
        if config.method == "forecast":
            windows = make_windows(scaled, config.window, config.horizon, stride=stride, start=start, end=end)
            steps = windows.target_index[:, None] + np.arange(config.horizon)
            return windows.x, windows.y.reshape(len(windows.y), -1), steps
        first = np.arange(start, end - config.window + 1, stride)
        steps = first[:, None] + np.arange(config.window)
        x = scaled[steps]
        return x, x, steps

    def build_model(self, features: int) -> Sequential:
        """The forecaster ``[Input((window, F)), <Cell>(units), Dense(horizon * F)]`` or the autoencoder
        ``[Input((window, F)), <Cell>(units), RepeatVector(window), <Cell>(units, return_sequences=True),
        TimeDistributed(Dense(F))]``."""
        config = self.config
        stack: list[Any] = [layers.Input((config.window, features)),
                            recurrent_layer(config.cell, config.units, **config.cell_options)]
        if config.method == "forecast":
            stack.append(layers.Dense(config.horizon * features))
        else:
            stack += [RepeatVector(config.window),
                      recurrent_layer(config.cell, config.units, return_sequences=True, **config.cell_options),
                      layers.TimeDistributed(layers.Dense(features))]
        return Sequential(stack)

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, data, labels=None, *, distributed: bool = False) -> "AnomalyDetector":
        """Train on normal data and calibrate the thresholds. The scaler and the network see the part
        before the last ``calibration`` steps; the thresholds come from the scores of those held-out steps
        (of the training steps with ``calibration=0``). ``labels`` ``(T,)``, optional: steps marked 1 are
        kept out of training windows and of calibration. Returns self; ``self.history`` is the History.
        ``distributed=True``: data-parallel over the processes of a torchrun launch (grukit.train.fit)."""
        config = self.config
        values = self._values(data, "fit")
        anomalous = (np.zeros(len(values), dtype=bool) if labels is None
                     else check_labels(labels, len(values), "AnomalyDetector.fit").astype(bool))
        split = chronological_split(len(values), validation=config.calibration, test=0)
        train_end = split.train_end
        if train_end < self.span:
            raise DataError(f"AnomalyDetector.fit: the training part has {train_end} steps (the last "
                            f"{len(values) - train_end} of {len(values)} are held out with calibration="
                            f"{config.calibration!r}), shorter than one window ({self._span_text()}); pass a "
                            "longer series, a smaller window or a smaller calibration part")
        self.scaler = SeriesScaler(config.scaler).fit(values[:train_end][~anomalous[:train_end]])
        scaled = self.scaler.transform(values)
        x, y, steps = self._windows(scaled, 0, train_end, config.stride)
        clean = ~self._touches(anomalous, steps, x)
        if not clean.any():
            raise DataError("AnomalyDetector.fit: every training window holds a step labelled anomalous; pass "
                            "more normal data")
        fit_options: dict[str, Any] = {}
        held_out = len(values) - train_end   # validation windows score held-out steps only
        if held_out >= (config.horizon if config.method == "forecast" else config.window):
            x_val, y_val, val_steps = self._windows(scaled, train_end, len(values))
            keep = ~self._touches(anomalous, val_steps, x_val)
            if keep.any():
                fit_options["validation_data"] = (x_val[keep].astype(np.float32), y_val[keep].astype(np.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = self.build_model(values.shape[1])
        model.compile(optimizer=Adam(learning_rate=config.learning_rate), loss="mse")
        self.history = model.fit(x[clean].astype(np.float32), y[clean].astype(np.float32), epochs=config.epochs,
                                 batch_size=config.batch_size, seed=config.seed, verbose=config.verbose,
                                 distributed=distributed, precision=config.precision, **fit_options)
        model.eval()
        self.model = model
        calibrate_from = train_end if train_end < len(values) else 0
        self._calibrate_scaled(scaled, anomalous, calibrate_from)
        return self

    def _touches(self, anomalous: np.ndarray, steps: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: the window reads or scores a labelled step."""
        hit = anomalous[steps].any(axis=1)
        if self.config.method == "forecast":  # its inputs too: the window steps before the targets
            inputs = steps[:, :1] - np.arange(self.config.window, 0, -1)
            hit |= anomalous[inputs].any(axis=1)
        return hit

    # -- scores and thresholds -------------------------------------------------------------------
    def _model_scores(self, scaled: np.ndarray) -> np.ndarray:
        """``(T,)`` squared errors averaged over columns and over the windows scoring each step."""
        model = self.require_fitted("score")
        x, y, steps = self._windows(scaled, 0, len(scaled))
        outputs = model.predict(x.astype(np.float32), batch_size=256).reshape(len(x), steps.shape[1], -1)
        errors = ((outputs - y.reshape(outputs.shape)) ** 2).mean(axis=-1)
        total = np.zeros(len(scaled))
        count = np.zeros(len(scaled))
        np.add.at(total, steps.reshape(-1), errors.reshape(-1))
        np.add.at(count, steps.reshape(-1), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan)

    def _all_scores(self, scaled: np.ndarray) -> dict[str, np.ndarray]:
        return {"model": self._model_scores(scaled),
                "rolling_zscore": rolling_zscore_scores(scaled, self.baseline_window),
                "seasonal_naive": seasonal_naive_scores(scaled, self.config.season)}

    def _calibrate_scaled(self, scaled: np.ndarray, anomalous: np.ndarray, start: int) -> None:
        """Thresholds from the scores of the steps from ``start`` on that are not labelled anomalous."""
        config = self.config
        normal = ~anomalous
        normal[:start] = False
        every = self._all_scores(scaled)
        thresholds = {name: threshold_from_scores(scores[normal], config.threshold_rule, config.quantile, config.k)
                      for name, scores in every.items()}
        self.threshold = thresholds.pop("model")
        self.baseline_thresholds = thresholds
        self.calibration_steps = int((normal & np.isfinite(every["model"])).sum())

    def score(self, data) -> np.ndarray:
        """``(T,)`` anomaly scores (mean squared error in scaled units; NaN where no window scores the step:
        the first ``window`` steps of the forecast method)."""
        self.require_fitted("score")
        return self._model_scores(self.scaler.transform(self._values(data, "score")))

    def calibrate(self, data, labels=None) -> "AnomalyDetector":
        """Recompute the thresholds (model and baselines) from the scores of ``data``, normal data: every
        scored step that ``labels`` (optional, ``(T,)`` 0/1) does not mark anomalous. Returns self."""
        self.require_fitted("calibrate")
        values = self._values(data, "calibrate")
        anomalous = (np.zeros(len(values), dtype=bool) if labels is None
                     else check_labels(labels, len(values), "AnomalyDetector.calibrate").astype(bool))
        self._calibrate_scaled(self.scaler.transform(values), anomalous, 0)
        return self

    def predict(self, data) -> np.ndarray:
        """``(T,)`` int8: 1 where the score is above :attr:`threshold`, else 0 (also where there is no score)."""
        self.require_fitted("predict")
        scores = self.score(data)
        with np.errstate(invalid="ignore"):
            return (scores > self.threshold).astype(np.int8)

    def evaluate(self, data, labels, test: int | float | None = None) -> AnomalyEvaluation:
        """Per-time-step precision, recall, F1 (of the flags) and ROC-AUC (of the scores) against ``labels``
        ``(T,)`` (1 = anomalous), for the model and the baselines, on the steps that every detector scores,
        restricted to the last ``test`` steps (a count or a fraction of T; None: all). ``data`` is the whole
        series: windows of test steps read the history before them. Returns an :class:`AnomalyEvaluation`."""
        self.require_fitted("evaluate")
        values = self._values(data, "evaluate")
        labels = check_labels(labels, len(values), "AnomalyDetector.evaluate")
        start = 0 if test is None else len(values) - part_size(test, len(values), "test")
        every = self._all_scores(self.scaler.transform(values))
        scored = np.arange(len(values)) >= start
        for scores in every.values():
            scored &= np.isfinite(scores)
        steps = np.flatnonzero(scored)
        if len(steps) == 0:
            raise DataError(f"AnomalyDetector.evaluate: no step from {start} on is scored by every detector (the "
                            f"first {max(self.config.window, self.baseline_window, self.config.season)} steps "
                            "have no score); pass a longer series or a larger test part")
        thresholds = {"model": self.threshold, **self.baseline_thresholds}
        step_scores, flags, results = {}, {}, {}
        for name, scores in every.items():
            step_scores[name] = scores[steps]
            flags[name] = (step_scores[name] > thresholds[name]).astype(np.int8)
            results[name] = {**detection_scores(labels[steps], flags[name], step_scores[name]),
                             "threshold": thresholds[name], "flagged": int(flags[name].sum())}
        name = f"{cell_class(self.config.cell).__name__}({self.config.units}) {self.config.method} error"
        return AnomalyEvaluation(results, steps, labels[steps], step_scores, flags, name, self.config.season,
                                 self.baseline_window)

    # -- saving (plumbing in Task) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "columns_named": self.columns_named, "scaler": self.scaler.to_dict(),
                "threshold": self.threshold, "baseline_thresholds": self.baseline_thresholds,
                "calibration_steps": self.calibration_steps}

    def load_state(self, state: dict[str, Any]) -> None:
        self.columns = list(state["columns"])
        self.columns_named = bool(state["columns_named"])
        self.scaler = SeriesScaler.from_dict(state["scaler"])
        self.threshold = float(state["threshold"])
        self.baseline_thresholds = {k: float(v) for k, v in state["baseline_thresholds"].items()}
        self.calibration_steps = state.get("calibration_steps")


__all__ = ["AnomalyDetector", "AnomalyConfig", "AnomalyEvaluation", "InjectedAnomalies", "RepeatVector",
           "inject_anomalies", "threshold_from_scores", "detection_scores", "rolling_zscore_scores",
           "seasonal_naive_scores", "check_labels", "METHODS", "THRESHOLD_RULES"]
