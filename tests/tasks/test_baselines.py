"""Forecasting baselines and scores on tiny series with answers computed by hand."""

import numpy as np
import pytest

from grukit.data.timeseries import make_windows, mase_scale
from grukit.errors import ConfigError, ShapeError
from grukit.tasks.baselines import LinearAutoregression, forecast_scores, last_value, seasonal_naive
from grukit.train.losses import get_loss
from grukit.train.metrics import METRIC_NAMES, get_metric, smape

# a tiny "monthly" series with a season of 3: 1 5 3 | 2 6 4 | 3 7 5 | 4
SERIES = np.array([1.0, 5.0, 3.0, 2.0, 6.0, 4.0, 3.0, 7.0, 5.0, 4.0])


def test_last_value_repeats_the_last_observation():
    windows = make_windows(SERIES, lookback=3, horizon=2, start=6)    # targets at 6-7 and 7-8, 8-9
    assert windows.target_index.tolist() == [6, 7, 8]
    forecast = last_value(windows.x, horizon=2)
    np.testing.assert_array_equal(forecast[..., 0], [[4, 4], [3, 3], [7, 7]])


def test_seasonal_naive_repeats_the_last_season():
    windows = make_windows(SERIES, lookback=3, horizon=4, start=6)    # one window
    # window at target 6: history [2, 6, 4]; steps 6, 7, 8, 9 take 2, 6, 4, then 2 again (h = 4 > m = 3)
    np.testing.assert_array_equal(seasonal_naive(windows.x, horizon=4, period=3)[0, :, 0], [2, 6, 4, 2])
    x = np.array([[[1.0], [2.0], [3.0], [4.0]]])
    np.testing.assert_array_equal(seasonal_naive(x, horizon=3, period=2)[0, :, 0], [3, 4, 3])
    np.testing.assert_array_equal(seasonal_naive(x, horizon=2, period=1)[0, :, 0], [4, 4])  # m = 1 is naive


def test_seasonal_naive_needs_a_window_as_long_as_the_period():
    with pytest.raises(ConfigError, match="hold 2 steps but period=3"):
        seasonal_naive(np.zeros((1, 2, 1)), horizon=1, period=3)
    with pytest.raises(ShapeError, match=r"\(N, time_steps, features\)"):
        last_value(np.zeros((2, 3)), horizon=1)


def test_baselines_pick_target_columns():
    x = np.array([[[1.0, 10.0], [2.0, 20.0]]])
    np.testing.assert_array_equal(last_value(x, horizon=1, targets=[1]), [[[20.0]]])
    np.testing.assert_array_equal(seasonal_naive(x, horizon=2, period=2, targets=1), [[[10.0], [20.0]]])


def test_linear_autoregression_recovers_an_exact_linear_recurrence():
    # y_t = 0.5 y_{t-1} + 0.25 y_{t-2} + 1: least squares on lags 2 must find it, and step 2 follows
    values = [1.0, 2.0]
    for _ in range(30):
        values.append(0.5 * values[-1] + 0.25 * values[-2] + 1.0)
    windows = make_windows(np.array(values), lookback=4, horizon=2)
    ar = LinearAutoregression(lags=2).fit(windows.x, windows.y)
    np.testing.assert_allclose(ar.predict(windows.x), windows.y, atol=1e-9)
    np.testing.assert_allclose(ar.coefficients[:, 0], [0.25, 0.5], atol=1e-9)   # oldest lag first
    np.testing.assert_allclose(ar.intercept[0], 1.0, atol=1e-9)
    restored = LinearAutoregression.from_dict(ar.to_dict())
    np.testing.assert_array_equal(restored.predict(windows.x), ar.predict(windows.x))
    with pytest.raises(ConfigError, match="before fit"):
        LinearAutoregression().predict(windows.x)


def test_smape_against_the_literal_formula():
    actual, forecast = np.array([100.0, 200.0, 0.0]), np.array([110.0, 180.0, 0.0])
    expected = 100 / 3 * (2 * 10 / 210 + 2 * 20 / 380 + 0.0)   # 0/0 counts as a perfect forecast
    assert smape(actual, forecast) == pytest.approx(expected)
    assert get_metric("smape", get_loss("mse"))(actual, forecast) == pytest.approx(expected)
    assert "smape" in METRIC_NAMES
    assert smape([1.0], [-1.0]) == pytest.approx(200.0)


def test_forecast_scores_by_hand():
    actual = np.array([[[10.0], [12.0]]])
    forecast = np.array([[[11.0], [9.0]]])
    training = np.array([1.0, 3.0, 2.0, 5.0])        # naive in-sample MAE (2 + 1 + 3) / 3 = 2
    scores = forecast_scores(actual, forecast, mase_scale(training))
    assert scores["mae"] == pytest.approx(2.0)
    assert scores["rmse"] == pytest.approx(np.sqrt((1 + 9) / 2))
    assert scores["smape"] == pytest.approx(100 / 2 * (2 / 21 + 6 / 21))
    assert scores["mase"] == pytest.approx(1.0)
