"""Forecasting with a recurrent network, scored beside the baselines it has to beat.

``Forecaster`` is the tutorial model, ``Sequential([Input((lookback, F)), GRU(units),
Dense(horizon * k)])``, trained with ``compile(adam, mse)`` / ``fit``, wrapped with the data handling
a forecast needs:

1. the series ``(T, F)`` (a TimeSeries, an array, or named columns) has its missing values handled
   as ``missing=`` says (never silently);
2. optionally its logarithm is taken (``log=True``: multiplicative seasonality becomes additive);
3. a scaler (``"standard"``, ``"minmax"`` or ``"none"``) is fitted on the training part only;
4. windows of ``lookback`` steps predict the next ``horizon`` steps of the ``k`` target columns;
   with ``predict_change=True`` each window is shifted so that its last step is 0 and the model
   predicts the change from the last observed value (a trend no training window reached stays
   within reach);
5. forecasts are mapped back through all of this to original units.

``evaluate`` scores the model and three baselines on the same test windows in original units:
last value, seasonal naive (period ``season``) and a linear autoregression fitted by least squares on
the same inputs and targets the network sees (the network's gain over a linear model of the same
data). Scores: MAE, RMSE, sMAPE (percent) and MASE, whose scale is the in-sample seasonal-naive MAE
(period ``season``) of the series given to ``fit`` (Hyndman & Koehler 2006).

Example::

    from grukit.data.timeseries import read_series
    from grukit.tasks import Forecaster

    series = read_series("airline-passengers.csv", "Month", "Passengers")
    forecaster = Forecaster(lookback=24, horizon=12, season=12, log=True, predict_change=True, epochs=300)
    forecaster.fit(series.values[:-24])                 # everything before the last 24 months
    result = forecaster.evaluate(series, test=24)       # windows whose 12 targets lie in the last 24 months
    print(result.table())                               # model beside last value, seasonal naive, linear AR
    forecaster.predict(series)                          # (12, 1): the next 12 months, in passengers
    forecaster.save("runs/airline"); Forecaster.load("runs/airline")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grukit import layers
from grukit.data.timeseries import (MissingReport, SeriesScaler, TimeSeries, as_matrix, chronological_split,
                                    make_windows, mase_scale, part_size)
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.models import Sequential
from grukit.tasks.base import ConfigRecord, Task, cell_class, recurrent_layer
from grukit.tasks.baselines import LinearAutoregression, forecast_scores, last_value, seasonal_naive
from grukit.train import Adam, EarlyStopping
from grukit.train.loop import check_precision


@dataclass
class ForecasterConfig(ConfigRecord):
    """Everything that defines a Forecaster (saved in ``task.json``).

    ``lookback``: input steps per window; ``horizon``: steps forecast at once; ``cell``: "gru",
    "lstm", "rnn", "mgu" or "mingru"; ``units``: its width; ``season``: the period m of the
    seasonal-naive baseline and of MASE's scale (12 for monthly data, 1 for none); ``columns``:
    the value columns read from named data (default all); ``targets``: the columns forecast
    (names or indices, default all); ``scaler``: "standard", "minmax" or "none"; ``log``: model
    the logarithm (values must be positive); ``predict_change``: model changes from each window's
    last value; ``epochs``, ``batch_size``, ``learning_rate`` (Adam); ``validation``: the last part of
    the fit data (count or fraction) held out for validation; ``patience``: early stopping on the
    validation loss (restoring the best weights), None for a fixed number of epochs; ``ar_lags``:
    lags of the linear-AR baseline (1 to lookback; default lookback); ``stride``: step between training windows;
    ``missing``/``fill``: see :func:`grukit.data.timeseries.handle_missing`; ``seed``: weights and
    batch order; ``cell_options``: extra arguments of the recurrent layer.
    ``precision``: "float32", or "mixed_bfloat16" to train the recurrent layer in grukit's bfloat16
    mode (``fit(precision=...)``; fast on CPUs with BF16 units); predictions run in float32.
    """

    lookback: int = 12
    horizon: int = 1
    cell: str = "gru"
    units: int = 64
    season: int = 1
    columns: list[str] | None = None
    targets: list[Any] | None = None
    scaler: str = "standard"
    log: bool = False
    predict_change: bool = False
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation: int | float = 0
    patience: int | None = None
    ar_lags: int | None = None
    stride: int = 1
    missing: str = "raise"
    fill: str = "forward"
    seed: int = 0
    verbose: int = 0
    precision: str = "float32"
    cell_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision, "Forecaster")
        for name in ("lookback", "horizon", "units", "season", "epochs", "batch_size", "stride"):
            _check_int(name, getattr(self, name), 1)
        if self.patience is not None:
            _check_int("patience", self.patience, 0, what=" (epochs without improvement before stopping) or None")
        if self.ar_lags is not None:   # the linear-AR baseline reads the last ar_lags steps of each window
            _check_int("ar_lags", self.ar_lags, 1, self.lookback, " (at most lookback) or None (the whole window)")
        if self.verbose not in (0, 1, 2) or isinstance(self.verbose, bool):
            raise ConfigError(f"Forecaster(verbose={self.verbose!r}): expected 0 (silent), 1 (progress bar) or 2 "
                              "(one line per epoch)")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
            raise ConfigError(f"Forecaster(learning_rate={rate!r}): expected a finite number > 0")
        validation = self.validation
        if isinstance(validation, bool) or not isinstance(validation, (int, float)) or validation < 0 or (
                isinstance(validation, float) and not validation < 1):
            raise ConfigError(f"Forecaster(validation={validation!r}): expected a count (int >= 0) or a fraction "
                              "(float in [0, 1)) of the fit data's steps to hold out")
        cell_class(self.cell)
        SeriesScaler(self.scaler)
        if isinstance(self.targets, (str, int)):
            self.targets = [self.targets]
        if isinstance(self.columns, str):
            self.columns = [self.columns]
        if self.patience is not None and not self.validation:
            raise ConfigError(f"Forecaster(patience={self.patience}) stops on the validation loss; pass "
                              "validation= (a count or fraction of the fit data) too, or patience=None")


def _named(data) -> bool:
    """Data with column names (picked by name) rather than a plain array."""
    return isinstance(data, (TimeSeries, dict)) or hasattr(data, "columns")


def _check_int(name: str, value, low: int, high: int | None = None, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"Forecaster({name}={value!r}): expected an int {span}{what}")


@dataclass
class Evaluation:
    """Scores of the model and the baselines on the same test windows, in original units.

    ``scores``: ``{"model" | "last_value" | "seasonal_naive" | "linear_ar": {"mae", "rmse", "smape",
    "mase"}}``; ``forecasts``: the same keys to ``(N, horizon, k)`` arrays; ``actual``: ``(N, horizon, k)``;
    ``target_index``: ``(N,)`` the series index of each window's first target.
    """

    scores: dict[str, dict[str, float]]
    forecasts: dict[str, np.ndarray]
    actual: np.ndarray
    target_index: np.ndarray
    test_start: int
    test_steps: int
    horizon: int
    season: int
    model_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "windows": int(len(self.actual)), "test_start": self.test_start,
                "test_steps": self.test_steps, "horizon": self.horizon, "season": self.season,
                "scores": self.scores}

    def table(self) -> str:
        """A markdown table: one row per forecaster, MAE, RMSE, sMAPE %, MASE."""
        labels = {"model": self.model_name, "last_value": "last value (naive)",
                  "seasonal_naive": f"seasonal naive (m={self.season})", "linear_ar": "linear AR (least squares)"}
        lines = ["| forecaster | MAE | RMSE | sMAPE % | MASE |", "|---|---:|---:|---:|---:|"]
        for key, score in self.scores.items():
            lines.append(f"| {labels.get(key, key)} | {score['mae']:.2f} | {score['rmse']:.2f} | "
                         f"{score['smape']:.2f} | {score['mase']:.3f} |")
        return "\n".join(lines)


class Forecaster(Task):
    """A recurrent forecaster: ``Forecaster(lookback=..., horizon=..., cell="gru", units=64, ...)``
    (the arguments of :class:`ForecasterConfig`).

    Shapes: ``fit``/``evaluate`` take a series ``(T, F)`` (or ``(T,)``, a TimeSeries, a mapping or
    dataframe-like of named columns); the network reads ``(N, lookback, F)`` and predicts
    ``(N, horizon * k)``; ``predict`` returns ``(horizon, k)`` after a series or ``(N, horizon, k)``
    for windows ``(N, L >= lookback, F)``, in original units.

    Example::

        forecaster = Forecaster(lookback=24, horizon=12, season=12, log=True, predict_change=True)
        forecaster.fit(train_values)            # (T, 1)
        forecaster.predict(train_values)        # (12, 1)
    """

    def __init__(self, lookback: int = 12, horizon: int = 1, cell: str = "gru", units: int = 64,
                 **options) -> None:
        self.config = ForecasterConfig(lookback=lookback, horizon=horizon, cell=cell, units=units, **options)
        self.model: Sequential | None = None
        self.scaler: SeriesScaler | None = None
        self.linear_ar: LinearAutoregression | None = None
        self.columns: list[str] | None = None
        self.columns_named = False       # fitted on named columns (picked by name later) or on an array
        self.target_indices: list[int] | None = None
        self.scale: np.ndarray | None = None
        self.history = None
        self.missing_report = None
        self.fit_steps: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Forecaster":
        return cls(**ForecasterConfig.from_dict(config).to_dict())

    # -- data --------------------------------------------------------------------------------
    def _values(self, data, what: str) -> tuple[np.ndarray, list[str], MissingReport]:
        """``(values (T, F), column names, missing report)`` with missing values handled; named data
        gives the columns of ``config.columns`` at fit and the fitted columns afterwards."""
        config = self.config
        columns = None
        if _named(data):
            columns = self.columns if what != "fit" and self.columns_named else config.columns
        values, names, report = as_matrix(data, columns, missing=config.missing, fill=config.fill)
        if what != "fit" and values.shape[1] != len(self.columns):
            raise ShapeError(f"Forecaster.{what}: the series has {values.shape[1]} column(s) {names}, the model was "
                             f"fitted on {len(self.columns)} {self.columns}; pass the same columns")
        return values, names, report

    def _resolve_targets(self, names: list[str]) -> list[int]:
        if self.config.targets is None:
            return list(range(len(names)))
        chosen = []
        for target in self.config.targets:
            if isinstance(target, str):
                if target not in names:
                    raise ConfigError(f"Forecaster(targets=[{target!r}]): no such column; the columns are {names}")
                chosen.append(names.index(target))
            elif isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(names):
                chosen.append(target)
            else:
                raise ConfigError(f"Forecaster(targets=[{target!r}]): expected a column name or an index in "
                                  f"[0, {len(names)})")
        return chosen

    def _log(self, values: np.ndarray, columns: list[str] | None = None) -> np.ndarray:
        if not self.config.log:
            return values
        bad = values <= 0
        if bad.any():
            column = int(np.nonzero(bad.any(axis=0))[0][0])
            name = (columns or self.columns)[column]
            raise DataError(f"Forecaster(log=True) needs positive values, but column {name!r} has "
                            f"{int(bad[:, column].sum())} value(s) <= 0 (the first at row "
                            f"{int(np.argmax(bad[:, column]))}); use log=False for this series")
        return np.log(values)

    def _model_inputs(self, raw_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows ``(N, lookback, F)`` -> (network inputs ``(N, lookback, F)``, anchors ``(N, k)``),
        the anchor being what is added back to the network's output (0 without predict_change)."""
        scaled = self.scaler.transform(self._log(raw_x))
        anchor = scaled[:, -1, :] if self.config.predict_change else np.zeros_like(scaled[:, -1, :])
        return (scaled - anchor[:, None, :]).astype(np.float32), anchor[:, self.target_indices]

    def _model_targets(self, raw_y: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        scaled = self.scaler.transform(self._log(raw_y), columns=self.target_indices)
        return (scaled - anchor[:, None, :]).reshape(len(raw_y), -1).astype(np.float32)

    def _to_original(self, outputs: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        k = len(self.target_indices)
        scaled = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), self.config.horizon, k) + anchor[:, None]
        values = self.scaler.inverse_transform(scaled, columns=self.target_indices)
        return np.exp(values) if self.config.log else values

    # -- fit / predict / evaluate ------------------------------------------------------------
    def build_model(self, features: int) -> Sequential:
        """``Sequential([Input((lookback, features)), <Cell>(units), Dense(horizon * k)])``."""
        config = self.config
        outputs = config.horizon * len(self.target_indices)
        return Sequential([layers.Input((config.lookback, features)),
                           recurrent_layer(config.cell, config.units, **config.cell_options),
                           layers.Dense(outputs)])

    def fit(self, data, *, distributed: bool = False) -> "Forecaster":
        """Fit the scaler (training part only), the network and the linear-AR baseline on ``data``
        (everything before the test part; the last ``validation`` steps are held out for validation).
        Returns self; ``self.history`` is the training History.
        Every check of the data against the config (lengths, ``season``, ``validation``, ``log``, a
        constant series) runs before the first epoch; a refused fit leaves the forecaster as it was.
        ``distributed=True``: data-parallel over the processes of a torchrun launch (grukit.train.fit)."""
        config = self.config
        # every check of the data and config comes before the first epoch: a bad one fails at once
        values, names, report = self._values(data, "fit")
        targets = self._resolve_targets(names)
        split = chronological_split(len(values), validation=config.validation, test=0)
        needed = config.lookback + config.horizon
        if split.train_end < needed:
            raise DataError(f"Forecaster.fit: the training part has {split.train_end} steps but one window needs "
                            f"lookback + horizon = {needed}; pass a longer series or a smaller lookback/horizon")
        train = make_windows(values, config.lookback, config.horizon, stride=config.stride, targets=targets,
                             end=split.train_end)
        if len(train) < 2:
            raise DataError(f"Forecaster.fit: the training part has {split.train_end} steps, room for 1 window of "
                            f"lookback + horizon = {needed} (stride {config.stride}); the linear-AR baseline needs "
                            "at least 2: pass a longer series or a smaller lookback/horizon/stride")
        held = None
        if split.validation_end > split.train_end:
            held_steps = split.validation_end - split.train_end
            if held_steps < config.horizon:
                raise DataError(f"Forecaster.fit: validation={config.validation!r} holds out {held_steps} step(s), "
                                f"fewer than horizon = {config.horizon}, so no validation window fits; pass "
                                f"validation >= {config.horizon} steps, or 0 for none")
            held = make_windows(values, config.lookback, config.horizon, targets=targets, start=split.train_end)
        if len(values) <= config.season:
            raise DataError(f"Forecaster.fit: season={config.season} needs a series longer than one season (MASE's "
                            f"scale compares each step with the one a season before), got {len(values)} steps; pass "
                            "a smaller season or a longer series")
        scale = mase_scale(values[:, targets], config.season)      # DataError for a constant series
        scaler = SeriesScaler(config.scaler).fit(self._log(values, names)[split.train])
        # the data passed every check: from here on this forecaster describes the new fit
        self.model, self.history, self.columns, self.target_indices = None, None, names, targets
        self.scaler, self.scale, self.fit_steps = scaler, scale, len(values)
        self.missing_report, self.columns_named = report, _named(data)
        x, anchor = self._model_inputs(train.x)
        y = self._model_targets(train.y, anchor)
        self.linear_ar = LinearAutoregression(config.ar_lags).fit(x, y)
        fit_options: dict[str, Any] = {}
        if held is not None:
            x_val, anchor_val = self._model_inputs(held.x)
            fit_options["validation_data"] = (x_val, self._model_targets(held.y, anchor_val))
            if config.patience is not None:
                fit_options["callbacks"] = [EarlyStopping(patience=config.patience, restore_best_weights=True)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = self.build_model(values.shape[1])
        model.compile(optimizer=Adam(learning_rate=config.learning_rate), loss="mse")
        self.history = model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                 verbose=config.verbose, distributed=distributed, precision=config.precision,
                                 **fit_options)
        model.eval()
        self.model = model
        return self

    def _forecast_windows(self, raw_x: np.ndarray, use: str = "model") -> np.ndarray:
        x, anchor = self._model_inputs(raw_x[:, -self.config.lookback:])
        if use == "model":
            outputs = self.model.predict(x, batch_size=256)
        else:
            outputs = self.linear_ar.predict(x)
        return self._to_original(outputs, anchor)

    def predict(self, data) -> np.ndarray:
        """Forecasts in original units: ``(horizon, k)`` for the steps after a series ``(T, F)`` with
        T >= lookback, or ``(N, horizon, k)`` for raw windows ``(N, L, F)`` with L >= lookback."""
        self.require_fitted("predict")
        lookback = self.config.lookback
        if isinstance(data, np.ndarray) and data.ndim == 3:
            if data.shape[1] < lookback or data.shape[2] != len(self.columns):
                raise ShapeError(f"Forecaster.predict: windows must be (N, >= {lookback}, {len(self.columns)}), "
                                 f"got {data.shape}")
            windows = np.asarray(data, dtype=np.float64)
            if not np.isfinite(windows).all():
                raise DataError("Forecaster.predict: the windows hold NaN or infinite values; handle missing values "
                                "in the series first (grukit.data.timeseries.handle_missing) and window it again")
            return self._forecast_windows(windows)
        values, _, _ = self._values(data, "predict")
        if len(values) < lookback:
            raise DataError(f"Forecaster.predict: the series has {len(values)} steps, the model reads the last "
                            f"lookback = {lookback}; pass a longer history")
        return self._forecast_windows(values[None, -lookback:])[0]

    def evaluate(self, data, test: int | float = 0.2, stride: int = 1) -> Evaluation:
        """Score the model and the baselines on the windows whose ``horizon`` targets all lie in the
        last ``test`` steps of ``data`` (a count, or a fraction of its length); their inputs reach back
        into the history before. ``data`` is the whole series (history and test part), in the
        columns fit saw. Returns an :class:`Evaluation` (``.scores``, ``.table()``, ``.to_dict()``)."""
        self.require_fitted("evaluate")
        config = self.config
        values, _, _ = self._values(data, "evaluate")
        test_steps = part_size(test, len(values), "test")
        test_start = len(values) - test_steps
        context = max(config.lookback, config.season)
        windows = make_windows(values, context, config.horizon, stride=stride, targets=self.target_indices,
                               start=test_start)
        forecasts = {
            "model": self._forecast_windows(windows.x),
            "last_value": last_value(windows.x, config.horizon, self.target_indices),
            "seasonal_naive": seasonal_naive(windows.x, config.horizon, config.season, self.target_indices),
            "linear_ar": self._forecast_windows(windows.x, use="linear_ar"),
        }
        scores = {name: forecast_scores(windows.y, forecast, self.scale) for name, forecast in forecasts.items()}
        name = f"{cell_class(config.cell).__name__}({config.units})"
        return Evaluation(scores, forecasts, windows.y, windows.target_index, test_start, test_steps,
                          config.horizon, config.season, name)

    # -- saving (plumbing in Task) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "columns_named": self.columns_named, "target_indices": self.target_indices, "scaler": self.scaler.to_dict(),
                "mase_scale": self.scale.tolist(), "linear_ar": self.linear_ar.to_dict(),
                "fit_steps": self.fit_steps,
                "missing": self.missing_report.to_dict() if self.missing_report is not None else None}

    def load_state(self, state: dict[str, Any]) -> None:
        self.columns = list(state["columns"])
        self.columns_named = bool(state["columns_named"])
        self.target_indices = list(state["target_indices"])
        self.scaler = SeriesScaler.from_dict(state["scaler"])
        self.scale = np.asarray(state["mase_scale"], dtype=np.float64)
        self.linear_ar = LinearAutoregression.from_dict(state["linear_ar"])
        self.fit_steps = state.get("fit_steps")


__all__ = ["Forecaster", "ForecasterConfig", "Evaluation"]

