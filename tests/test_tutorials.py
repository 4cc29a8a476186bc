"""The tutorials' models, written as the tutorials write them, on real data in ../shared/data."""

import csv

import numpy as np
import pytest
import torch

from grukit import layers as L
from grukit.models import Sequential

pytestmark = pytest.mark.data


def monthly_series(shared_data, name):
    with open(shared_data / "timeseries" / name, newline="", encoding="utf-8") as handle:
        return np.array([float(row[-1]) for row in list(csv.reader(handle))[1:] if row])


def windows(series, lookback):
    x = np.stack([series[i:i + lookback] for i in range(len(series) - lookback)])
    return x[..., None].astype(np.float32), series[lookback:, None].astype(np.float32)


@pytest.mark.parametrize("name,test_months,log_changes,epochs", [
    ("airline-passengers.csv", 24, True, 60), ("monthly-sunspots.csv", 240, False, 15)])
def test_forecasting_model_beats_the_last_value(shared_data, name, test_months, log_changes, epochs):
    """GRU(64) -> Dense(1) on (samples, time_steps, features) windows, one-step forecasts of the held-out
    final months against the last value; the scaler is fitted on the training part only. The airline
    series has a trend no training window reaches, so that model reads month-to-month log changes."""
    series = monthly_series(shared_data, name)
    values = np.diff(np.log(series)) if log_changes else series
    lookback = 12
    train_end = len(values) - test_months
    mean, std = values[:train_end].mean(), values[:train_end].std()
    x, y = windows((values - mean) / std, lookback)
    split = train_end - lookback
    torch.manual_seed(0)
    model = Sequential([L.Input((lookback, 1)), L.GRU(64), L.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x[:split], y[:split], epochs=epochs, batch_size=16, seed=0, verbose=0)
    predicted = model.predict(x[split:])[:, 0] * std + mean
    actual = series[-test_months:]
    previous = series[-test_months - 1:-1]
    forecast = previous * np.exp(predicted) if log_changes else predicted
    gru_mae = np.abs(forecast - actual).mean()
    naive_mae = np.abs(previous - actual).mean()
    mean_mae = np.abs(series[:-test_months].mean() - actual).mean()
    assert gru_mae < naive_mae, f"GRU MAE {gru_mae:.2f} vs last value {naive_mae:.2f}"
    assert gru_mae < 0.5 * mean_mae, f"GRU MAE {gru_mae:.2f} vs the training mean {mean_mae:.2f}"
    if log_changes:  # a trend the last value lags behind: the GRU must beat it widely
        assert gru_mae < 0.8 * naive_mae, f"GRU MAE {gru_mae:.2f} vs last value {naive_mae:.2f}"
