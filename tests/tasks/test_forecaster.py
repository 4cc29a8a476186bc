"""Forecaster: fit / evaluate / predict in original units, no leakage, save and load, errors."""

import json
import re

import numpy as np
import pytest
import torch

from grukit.data.timeseries import chronological_split, make_windows, read_series
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.tasks import Forecaster, cell_class, recurrent_layer
from grukit import layers


def seasonal_series(length=80):
    """A positive trending series with a season of 6 and a little noise (seeded)."""
    t = np.arange(length)
    noise = np.random.default_rng(0).normal(0, 0.3, length)
    return 20 + 0.2 * t + 3 * np.sin(2 * np.pi * t / 6) + noise


def small(**options):
    settings = dict(lookback=8, horizon=3, units=8, season=6, epochs=3, batch_size=16, seed=0)
    settings.update(options)
    return Forecaster(**settings)


def test_cell_names_map_to_layers():
    assert cell_class("gru") is layers.GRU and cell_class("LSTM") is layers.LSTM
    assert cell_class("rnn") is layers.SimpleRNN and cell_class("mgu") is layers.MGU
    assert cell_class("minGRU") is layers.MinGRU
    assert recurrent_layer("gru", 5).units == 5
    with pytest.raises(ConfigError, match="cell='transformer'.*'gru', 'lstm'"):
        Forecaster(cell="transformer")


def test_model_is_the_tutorial_stack_and_outputs_horizon_steps():
    values = seasonal_series()
    forecaster = small().fit(values[:60])
    stack = forecaster.model.layers
    assert [type(layer).__name__ for layer in stack] == ["GRU", "Dense"]
    assert stack[0].units == 8 and stack[1].units == 3
    assert forecaster.predict(values[:60]).shape == (3, 1)
    windows = make_windows(values, lookback=10, horizon=3).x                # longer windows: last 8 steps used
    assert forecaster.predict(windows).shape == (len(windows), 3, 1)
    np.testing.assert_allclose(forecaster.predict(windows[-1:])[0], forecaster.predict(values[:-3]))


def test_scaler_is_fitted_on_the_training_part_only():
    values = seasonal_series()
    forecaster = small(validation=12).fit(values[:60])
    split = chronological_split(60, validation=12, test=0)
    np.testing.assert_allclose(forecaster.scaler.center, [values[split.train].mean()])
    assert not np.isclose(forecaster.scaler.center[0], values[:60].mean())
    assert "val_loss" in forecaster.history.history
    logged = small(validation=12, log=True).fit(values[:60])
    np.testing.assert_allclose(logged.scaler.center, [np.log(values[:48]).mean()])


def test_evaluate_puts_model_and_baselines_side_by_side_on_the_test_windows():
    values = seasonal_series()
    forecaster = small(predict_change=True).fit(values[:60])
    result = forecaster.evaluate(values, test=20)
    assert set(result.scores) == {"model", "last_value", "seasonal_naive", "linear_ar"}
    for scores in result.scores.values():
        assert set(scores) == {"mae", "rmse", "smape", "mase"} and all(np.isfinite(list(scores.values())))
    # every window's targets lie in the last 20 steps: first targets at 60 .. 77
    assert result.target_index.tolist() == list(range(60, 78))
    np.testing.assert_array_equal(result.actual[:, :, 0], [values[t:t + 3] for t in range(60, 78)])
    np.testing.assert_array_equal(result.forecasts["last_value"][:, :, 0],
                                  np.repeat(values[59:77, None], 3, axis=1))
    # seasonal naive for step h: the value one season (6) before
    np.testing.assert_array_equal(result.forecasts["seasonal_naive"][:, 0, 0], values[54:72])
    scale = np.abs(values[6:60] - values[:54]).mean()
    naive_mae = np.abs(result.actual - result.forecasts["last_value"]).mean()
    assert result.scores["last_value"]["mase"] == pytest.approx(naive_mae / scale)
    assert "| GRU(8) |" in result.table() and json.dumps(result.to_dict())


def test_save_and_load_predict_identically(tmp_path):
    values = seasonal_series()
    forecaster = small(cell="lstm", log=True, predict_change=True, scaler="minmax").fit(values[:60])
    before = forecaster.predict(values)
    evaluation = forecaster.evaluate(values, test=20).scores
    folder = forecaster.save(tmp_path / "run")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "task.json"]
    loaded = Forecaster.load(folder)
    np.testing.assert_array_equal(loaded.predict(values), before)
    assert loaded.evaluate(values, test=20).scores == evaluation
    assert loaded.config == forecaster.config


def test_load_refuses_an_incomplete_or_foreign_folder(tmp_path):
    forecaster = small().fit(seasonal_series()[:60])
    folder = forecaster.save(tmp_path / "run")
    record = json.loads((folder / "task.json").read_text())
    record["task"] = "TextClassifier"
    (folder / "task.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="holds a 'TextClassifier', not a Forecaster"):
        Forecaster.load(folder)
    (folder / "task.json").unlink()
    with pytest.raises(DataError, match="task.json is missing"):
        Forecaster.load(folder)


def test_training_is_seeded():
    values = seasonal_series()
    first = small().fit(values[:60]).predict(values[:60])
    torch.manual_seed(123)  # the global generator must not matter
    second = small().fit(values[:60]).predict(values[:60])
    np.testing.assert_array_equal(first, second)


def test_named_columns_targets_and_missing_values(tmp_path):
    values = seasonal_series()
    data = {"load": values, "temperature": np.cos(np.arange(80) / 3)}
    forecaster = small(targets=["load"]).fit({k: v[:60] for k, v in data.items()})
    assert forecaster.columns == ["load", "temperature"] and forecaster.target_indices == [0]
    assert forecaster.model.layers[0].input_shape == (None, 8, 2)
    assert forecaster.predict(data).shape == (3, 1)
    with pytest.raises(ShapeError, match="fitted on 2"):
        forecaster.predict(values)
    folder = forecaster.save(tmp_path / "named")
    reordered = {"temperature": data["temperature"], "load": data["load"], "extra": values}
    np.testing.assert_array_equal(Forecaster.load(folder).predict(reordered), forecaster.predict(data))
    gappy = values[:60].copy()
    gappy[[10, 11]] = np.nan
    with pytest.raises(DataError, match="2 missing value.*row 10"):
        small().fit(gappy)
    with pytest.warns(UserWarning, match="interpolation"):
        filled = small(missing="fill", fill="interpolate").fit(gappy)
    assert filled.missing_report.count == 2


def test_bad_inputs_raise_clear_errors():
    values = seasonal_series()
    with pytest.raises(DataError, match="training part has 9 steps but one window needs lookback \\+ horizon = 11"):
        small().fit(values[:9])
    negative = values[:60] - 30
    with pytest.raises(DataError, match="log=True.*value\\(s\\) <= 0"):
        small(log=True).fit(negative)
    with pytest.raises(ConfigError, match="before fit"):
        small().predict(values)
    with pytest.raises(ConfigError, match="patience=3.*validation="):
        small(patience=3)
    with pytest.raises(ConfigError, match="lookback=0"):
        Forecaster(lookback=0)
    forecaster = small().fit(values[:60])
    with pytest.raises(DataError, match="has 5 steps.*lookback = 8"):
        forecaster.predict(values[:5])
    with pytest.raises(DataError, match="NaN or infinite"):
        forecaster.predict(np.full((1, 8, 1), np.nan))


@pytest.mark.data
def test_gru_beats_the_baselines_on_airline_passengers(shared_data):
    """The last 24 months held out; 12-month forecasts of log passengers relative to the last month."""
    series = read_series(shared_data / "timeseries" / "airline-passengers.csv", "Month", "Passengers")
    forecaster = Forecaster(lookback=24, horizon=12, season=12, log=True, predict_change=True, epochs=150,
                            batch_size=16, seed=0)
    forecaster.fit(series.values[:-24])
    scores = forecaster.evaluate(series, test=24).scores
    model = scores["model"]["mase"]
    assert model < 0.6 * scores["last_value"]["mase"], scores
    assert model < 0.6 * scores["seasonal_naive"]["mase"], scores
    assert model < 1.0, scores  # better than the seasonal naive forecast was in-sample


# -- config ranges and checks before training ---------------------------------------------------------------

FRACTION = "a count \\(int >= 0\\) or a fraction \\(float in \\[0, 1\\)\\)"


@pytest.mark.parametrize("field, value, allowed", [
    ("lookback", 0, "an int >= 1"), ("horizon", -1, "an int >= 1"), ("units", 2.5, "an int >= 1"),
    ("season", 0, "an int >= 1"), ("epochs", True, "an int >= 1"), ("batch_size", 0, "an int >= 1"),
    ("stride", 0, "an int >= 1"), ("patience", -2, "an int >= 0"), ("ar_lags", 0, "an int in \\[1, 8\\]"),
    ("ar_lags", 9, "an int in \\[1, 8\\]"), ("verbose", 3, "0 \\(silent\\), 1 \\(progress bar\\) or 2"),
    ("learning_rate", 0, "a finite number > 0"), ("learning_rate", float("nan"), "a finite number > 0"),
    ("learning_rate", float("inf"), "a finite number > 0"), ("validation", -1, FRACTION),
    ("validation", 1.5, FRACTION),
    # the ends of the ranges are accepted
    ("patience", 0, None), ("ar_lags", 8, None), ("verbose", 2, None), ("learning_rate", 1e-9, None),
    ("validation", 0.999999, None), ("validation", 0, None),
])
def test_config_names_the_field_the_value_and_the_allowed_range(field, value, allowed):
    """(The seed's range is checked for every task config by ConfigRecord, tests/tasks/test_task_files.py.)"""
    settings = dict(lookback=8, validation=12)        # validation: patience= alone is refused for another reason
    settings[field] = value
    if allowed is None:                                # inside the range
        assert getattr(Forecaster(**settings).config, field) == value
        return
    with pytest.raises(ConfigError, match=re.escape(f"Forecaster({field}={value!r}): expected ") + allowed):
        Forecaster(**settings)


@pytest.fixture
def training_spy(monkeypatch):
    """Records every Sequential.fit (the first epoch's caller) and runs it."""
    from grukit.models import Sequential

    calls, original = [], Sequential.fit

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("epochs"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Sequential, "fit", spy)
    return calls


@pytest.mark.parametrize("data, options, message", [
    (seasonal_series()[:30], dict(season=30), "season=30 needs a series longer than one season.*got 30 steps"),
    (np.full(40, 5.0), {}, "seasonal differences .* are all zero"),                   # no MASE scale
    (seasonal_series()[:11], {}, "room for 1 window of lookback \\+ horizon = 11"),   # the linear AR needs 2
    (seasonal_series()[:40], dict(validation=2), "validation=2 holds out 2 step\\(s\\), fewer than horizon = 3"),
])
def test_fit_checks_the_data_before_the_first_epoch(training_spy, data, options, message):
    with pytest.raises(DataError) as error:
        small(**options).fit(data)
    assert training_spy == []                            # refused before the first epoch
    assert re.search(message, str(error.value))
    small().fit(seasonal_series()[:40])                  # the spy does see a good fit
    assert training_spy == [3]


def test_a_refused_refit_keeps_the_fitted_forecaster(training_spy):
    values = seasonal_series()
    forecaster = small(season=40).fit(values[:60])
    before = forecaster.predict(values[:60])
    with pytest.raises(DataError) as error:
        forecaster.fit(values[:40] * 3)
    assert training_spy == [3] and "season=40" in str(error.value)
    np.testing.assert_array_equal(forecaster.predict(values[:60]), before)
    assert forecaster.fit_steps == 60
