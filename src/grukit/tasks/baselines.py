"""Forecasting baselines and the scores a forecaster is compared on.

Each baseline forecasts ``horizon`` steps for the same windows the model sees, from the window's
own history ``x`` ``(N, C, F)`` (C steps of context, F columns) and returns ``(N, horizon, k)`` for
the ``k`` target columns:

* :func:`last_value` (naive): every step repeats the last observed value, ``y_{T+h} = y_T``;
* :func:`seasonal_naive` (period m): the value one season earlier,
  ``y_{T+h} = y_{T+h-m(floor((h-1)/m)+1)}`` (Hyndman & Athanasopoulos, *FPP* 5.2); needs C >= m;
* :class:`LinearAutoregression`: least squares (scikit-learn's ``LinearRegression``) from the last
  ``lags`` steps of every column to all ``horizon * k`` targets at once (the direct multi-step
  strategy: one linear map per step ahead, no forecasts fed back).

:func:`forecast_scores` gives MAE, RMSE, sMAPE (percent) and MASE of a forecast; MAE, RMSE and
sMAPE come from the metric registry of :mod:`grukit.train.metrics`, MASE from
:func:`grukit.data.timeseries.mase` (it needs the training series' scale).

Example::

    x = np.array([[[1.0], [2.0], [3.0], [4.0]]])          # one window, C=4, F=1
    last_value(x, horizon=2)[0, :, 0]                     # [4, 4]
    seasonal_naive(x, horizon=3, period=2)[0, :, 0]       # [3, 4, 3]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from grukit.data.timeseries import mase, target_columns
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.train.losses import get_loss
from grukit.train.metrics import get_metric

BASELINES = ("last_value", "seasonal_naive", "linear_ar")
SCORES = ("mae", "rmse", "smape", "mase")


def _windows(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ShapeError(f"{what}: x must be windows (N, time_steps, features), got shape {x.shape}; build them "
                         "with grukit.data.timeseries.make_windows")
    return x


def _horizon(horizon) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ConfigError(f"horizon= must be an int >= 1, got {horizon!r}")
    return int(horizon)


def last_value(x, horizon: int, targets: int | Sequence[int] | None = None) -> np.ndarray:
    """Naive forecast: ``(N, horizon, k)``, each step equal to the window's last value.

    Example::

        last_value(np.arange(6.0).reshape(2, 3, 1), horizon=2)[..., 0]    # [[2, 2], [5, 5]]
    """
    x = _windows(x, "last_value")
    columns = target_columns(targets, x.shape[-1])
    return np.repeat(x[:, -1:, columns], _horizon(horizon), axis=1)


def seasonal_naive(x, horizon: int, period: int, targets: int | Sequence[int] | None = None) -> np.ndarray:
    """Seasonal-naive forecast with period ``m``: step h (1-based) repeats the value at
    ``T + h - m * (floor((h - 1) / m) + 1)``, i.e. the last observed season over and over.
    Returns ``(N, horizon, k)``; raises ConfigError when the windows are shorter than m.

    Example::

        seasonal_naive(np.array([[[1.0], [2.0], [3.0], [4.0]]]), horizon=3, period=2)[0, :, 0]   # [3, 4, 3]
    """
    x = _windows(x, "seasonal_naive")
    horizon = _horizon(horizon)
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
        raise ConfigError(f"period= must be an int >= 1 (the season length, e.g. 12 for monthly data), got {period!r}")
    context = x.shape[1]
    if context < period:
        raise ConfigError(f"seasonal_naive: the windows hold {context} steps but period={period} needs at least "
                          f"{period}; make windows with lookback >= {period}")
    columns = target_columns(targets, x.shape[-1])
    steps = context - period + np.arange(horizon) % period
    return x[:, steps][:, :, columns]


class LinearAutoregression:
    """Linear autoregression by least squares, direct multi-step: ``y (N, horizon, k)`` (or flat
    ``(N, horizon * k)``) from the last ``lags`` steps of the windows ``x (N, L, F)``, flattened, plus
    an intercept (scikit-learn's ``LinearRegression``). ``lags=None`` uses the whole window.

    Example::

        ar = LinearAutoregression(lags=2).fit(w.x, w.y)
        ar.predict(w.x).shape          # same shape as w.y
    """

    def __init__(self, lags: int | None = None) -> None:
        if lags is not None and (isinstance(lags, bool) or not isinstance(lags, (int, np.integer)) or lags < 1):
            raise ConfigError(f"lags= must be an int >= 1 or None (the whole window), got {lags!r}")
        self.lags = None if lags is None else int(lags)
        self.coefficients: np.ndarray | None = None   # (lags * F, outputs)
        self.intercept: np.ndarray | None = None      # (outputs,)
        self.target_shape: tuple[int, ...] | None = None

    def _design(self, x) -> np.ndarray:
        x = _windows(x, "LinearAutoregression")
        lags = x.shape[1] if self.lags is None else self.lags
        if x.shape[1] < lags:
            raise ShapeError(f"LinearAutoregression(lags={lags}) needs windows of at least {lags} steps, got "
                             f"{x.shape[1]}")
        return x[:, -lags:].reshape(len(x), -1)

    def fit(self, x, y) -> "LinearAutoregression":
        from sklearn.linear_model import LinearRegression
        design = self._design(x)
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(design):
            raise DataError(f"LinearAutoregression.fit: {len(design)} windows but {len(y)} targets")
        if len(design) < 2:
            raise DataError(f"LinearAutoregression.fit needs at least 2 training windows, got {len(design)}")
        self.target_shape = y.shape[1:]
        model = LinearRegression().fit(design, y.reshape(len(y), -1))
        self.coefficients, self.intercept = model.coef_.T.copy(), np.atleast_1d(model.intercept_).copy()
        return self

    def predict(self, x) -> np.ndarray:
        if self.coefficients is None:
            raise ConfigError("LinearAutoregression.predict() before fit(); fit it on the training windows first")
        design = self._design(x)
        if design.shape[1] != self.coefficients.shape[0]:
            raise ShapeError(f"LinearAutoregression was fitted on {self.coefficients.shape[0]} inputs per window, "
                             f"got {design.shape[1]}; use windows of the same lookback and columns")
        return (design @ self.coefficients + self.intercept).reshape(len(design), *self.target_shape)

    def to_dict(self) -> dict[str, Any]:
        return {"lags": self.lags, "target_shape": list(self.target_shape or ()),
                "coefficients": None if self.coefficients is None else self.coefficients.tolist(),
                "intercept": None if self.intercept is None else self.intercept.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "LinearAutoregression":
        model = cls(state["lags"])
        if state.get("coefficients") is not None:
            model.coefficients = np.asarray(state["coefficients"], dtype=np.float64)
            model.intercept = np.asarray(state["intercept"], dtype=np.float64)
            model.target_shape = tuple(state["target_shape"])
        return model


def forecast_scores(y_true, y_pred, scale) -> dict[str, float]:
    """``{"mae", "rmse", "smape", "mase"}`` of forecasts ``(N, horizon, k)`` in original units over all
    windows and steps; ``scale`` ``(k,)`` is the MASE denominator (:func:`grukit.data.timeseries.mase_scale`
    of the training part). sMAPE is in percent (0 to 200).

    Example::

        forecast_scores(y, last_value(x, 12), scale=mase_scale(train, 12))["mase"]
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ShapeError(f"forecast_scores: y_true {y_true.shape} and y_pred {y_pred.shape} differ")
    loss = get_loss("mse")  # the registry reads regression metrics the same under any regression loss
    scores = {name: get_metric(name, loss)(y_true, y_pred) for name in ("mae", "rmse", "smape")}
    scores["mase"] = mase(y_true, y_pred, scale=scale)
    return scores


__all__ = ["last_value", "seasonal_naive", "LinearAutoregression", "forecast_scores", "BASELINES", "SCORES"]
