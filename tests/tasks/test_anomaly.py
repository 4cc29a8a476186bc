"""AnomalyDetector: thresholds from normal data only, per-step metrics against scikit-learn, a blatant
spike flagged, save/load, baselines, injected anomalies, and clear errors for bad input."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from grukit.errors import ConfigError, DataError, ShapeError
from grukit.tasks import AnomalyDetector, inject_anomalies
from grukit.tasks.anomaly import (RepeatVector, detection_scores, rolling_zscore_scores, seasonal_naive_scores,
                                  threshold_from_scores)

WINDOW = 12


def sine(length=360, noise=0.05, seed=0):
    """A period-24 sine with a little seeded noise: normal data."""
    t = np.arange(length)
    return np.sin(2 * np.pi * t / 24) + noise * np.random.default_rng(seed).normal(size=length)


def small(method="forecast", **options):
    settings = dict(method=method, window=WINDOW, units=8, epochs=8, batch_size=32, learning_rate=1e-2, seed=0)
    settings.update(options)
    return AnomalyDetector(**settings)


@pytest.fixture(scope="module", params=["forecast", "reconstruction"])
def fitted(request, _one_thread):
    return small(request.param, calibration=0.25).fit(sine())


def test_threshold_is_the_quantile_of_the_held_out_normal_scores(fitted):
    series = sine()
    train_end = 270                                         # calibration=0.25 of 360 steps
    scores = fitted.score(series)
    held_out = scores[train_end:]
    assert np.isfinite(held_out).all()
    assert fitted.threshold == pytest.approx(np.quantile(held_out, 0.99), rel=1e-12)
    assert fitted.calibration_steps == 90
    # not the training part's scores (those are what the network was fitted on)
    assert fitted.threshold != pytest.approx(np.nanquantile(scores[:train_end], 0.99), rel=1e-6)
    # the baselines' thresholds come from the same steps by the same rule
    zscores = rolling_zscore_scores(fitted.scaler.transform(series[:, None]), WINDOW)
    assert fitted.baseline_thresholds["rolling_zscore"] == pytest.approx(np.quantile(zscores[train_end:], 0.99))


def test_labelled_anomalies_are_left_out_of_calibration_and_training():
    series = sine()
    series[300] += 8.0                                      # an anomaly inside the calibration part
    labels = np.zeros(len(series))
    labels[300] = 1
    detector = small(calibration=0.25, epochs=2).fit(series, labels)
    scores = detector.score(series)
    normal = np.ones(len(series), dtype=bool)
    normal[:270] = False
    normal[300] = False
    assert detector.threshold == pytest.approx(np.quantile(scores[normal], 0.99), rel=1e-12)
    assert detector.threshold < scores[300]
    # calibrate() recomputes from other normal data, with the other rule too
    other = small(calibration=0.25, epochs=2, threshold_rule="mean_std", k=2.0).fit(series, labels)
    clean = sine(seed=3)
    other.calibrate(clean)
    clean_scores = other.score(clean)[WINDOW:]
    assert other.threshold == pytest.approx(clean_scores.mean() + 2.0 * clean_scores.std(), rel=1e-12)


def test_threshold_rules_by_hand():
    scores = [1.0, 2.0, 3.0, 4.0, np.nan]
    assert threshold_from_scores(scores, "quantile", quantile=0.5) == 2.5
    assert threshold_from_scores(scores, "mean_std", k=1.0) == pytest.approx(2.5 + math.sqrt(1.25))
    with pytest.raises(DataError, match="no normal-data scores"):
        threshold_from_scores([np.nan], "quantile")


def test_detection_scores_match_sklearn_on_a_hand_case():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    flags = np.array([0, 1, 0, 1, 1, 0, 0, 0])
    scores = np.array([0.1, 0.9, 0.4, 0.6, 0.8, 0.2, 0.3, 0.35])
    result = detection_scores(labels, flags, scores)
    # tp = 2 (steps 1, 4), fp = 1 (step 3), fn = 2 (steps 2, 7)
    assert result["precision"] == pytest.approx(2 / 3) == skm.precision_score(labels, flags)
    assert result["recall"] == pytest.approx(2 / 4) == skm.recall_score(labels, flags)
    assert result["f1"] == pytest.approx(skm.f1_score(labels, flags)) == pytest.approx(4 / 7)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    # one class: ROC-AUC is NaN, as in grukit.train.metrics; precision/recall are 0, not an error
    one_class = detection_scores(np.zeros(4), [0, 1, 0, 0], [0.1, 0.9, 0.2, 0.3])
    assert math.isnan(one_class["roc_auc"]) and one_class["precision"] == 0.0 and one_class["recall"] == 0.0


def test_a_blatant_spike_is_flagged(fitted):
    series = sine(480, seed=1)
    series[420] += 6.0
    scores = fitted.score(series)
    flags = fitted.predict(series)
    assert flags.shape == (480,) and flags.dtype == np.int8
    assert int(np.nanargmax(scores)) == 420
    assert flags[420] == 1
    assert flags.sum() <= 0.08 * len(flags)                 # few false alarms on the normal steps
    labels = np.zeros(480)
    labels[420] = 1
    result = fitted.evaluate(series, labels, test=120)
    assert result.steps[0] == 360 and result.steps[-1] == 479
    assert result.scores["model"]["recall"] == 1.0 and result.scores["model"]["roc_auc"] > 0.99
    assert set(result.scores) == {"model", "rolling_zscore", "seasonal_naive"}
    assert f"| GRU(8) {fitted.config.method} error |" in result.table()
    assert json.dumps(result.to_dict())
    np.testing.assert_array_equal(result.flags["model"], flags[360:])


def test_scores_are_causal_for_forecast_and_cover_every_step_for_reconstruction(fitted):
    series = sine(200, seed=2)
    scores = fitted.score(series)
    if fitted.config.method == "forecast":
        assert np.isnan(scores[:WINDOW]).all() and np.isfinite(scores[WINDOW:]).all()
        changed = series.copy()
        changed[150:] += 5.0                                # the future does not change a forecast score
        np.testing.assert_allclose(fitted.score(changed)[:150], scores[:150], rtol=1e-6)
    else:
        assert np.isfinite(scores).all()
        stack = [type(layer).__name__ for layer in fitted.model.layers]
        assert stack == ["GRU", "RepeatVector", "GRU", "TimeDistributed"]


def test_save_and_load_predict_identically(fitted, tmp_path):
    series = sine(300, seed=4)
    series[200] -= 5.0
    fitted.save(tmp_path / "detector")
    loaded = AnomalyDetector.load(tmp_path / "detector")
    assert loaded.threshold == fitted.threshold and loaded.baseline_thresholds == fitted.baseline_thresholds
    assert loaded.config == fitted.config
    np.testing.assert_array_equal(loaded.score(series), fitted.score(series))
    np.testing.assert_array_equal(loaded.predict(series), fitted.predict(series))


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "mgu", "mingru"])
def test_every_cell_and_multivariate_series(cell):
    series = np.stack([sine(160), np.cos(np.arange(160) / 5)], axis=1)
    detector = small("reconstruction" if cell in ("lstm", "mingru") else "forecast", cell=cell, epochs=1,
                     horizon=2).fit(series)
    scores = detector.score(series)
    assert scores.shape == (160,) and np.isfinite(scores[WINDOW + 1:]).all()
    with pytest.raises(ShapeError, match="fitted on 2"):
        detector.score(series[:, :1])


def test_bad_input_raises_clear_errors(fitted):
    with pytest.raises(DataError, match="0 time steps, shorter than one window"):
        small().fit(np.array([]))
    with pytest.raises(DataError, match=r"has 10 time steps, shorter than one window \(window \+ horizon"):
        small().fit(sine(10))
    with pytest.raises(DataError, match="has 5 time steps, shorter than one window"):
        fitted.score(sine(5))
    with pytest.raises(DataError, match="training part has"):
        small(calibration=0.5).fit(sine(20))
    with pytest.raises(ShapeError, match=r"one 0/1 label per time step, shape \(100,\)"):
        fitted.evaluate(sine(100), np.zeros(99))
    with pytest.raises(DataError, match="must be 0 .normal. or 1 .anomalous., got 2 at step 3"):
        fitted.evaluate(sine(100), [0, 0, 0, 2] + [0] * 96)
    with pytest.raises(DataError, match="missing value"):
        fitted.score(np.r_[sine(50), np.nan])
    # all-normal labels: ROC-AUC is NaN (consistent with grukit.train.metrics), the rest still computes
    result = fitted.evaluate(sine(100), np.zeros(100))
    assert math.isnan(result.scores["model"]["roc_auc"]) and result.scores["model"]["recall"] == 0.0
    with pytest.raises(ConfigError, match=r"method='vae'\) is not known"):
        AnomalyDetector(method="vae")
    with pytest.raises(ConfigError, match="quantile=1.5"):
        AnomalyDetector(quantile=1.5)
    with pytest.raises(ConfigError, match="cell='transformer'"):
        AnomalyDetector(cell="transformer")
    with pytest.raises(ConfigError, match=r"predict\(\) before fit"):
        AnomalyDetector().predict(sine(100))


def test_baselines_by_hand():
    z = rolling_zscore_scores(np.array([0.0, 1.0, 0.0, 1.0, 9.0]), window=4)
    assert np.isnan(z[:4]).all() and z[4] == pytest.approx((9.0 - 0.5) / 0.5)
    naive = seasonal_naive_scores(np.array([1.0, 2.0, 4.0, 3.0]), season=2)
    np.testing.assert_allclose(naive, [np.nan, np.nan, 9.0, 1.0])
    flat = rolling_zscore_scores(np.ones(6), window=3)      # a flat stretch: finite, no division by zero
    assert np.isfinite(flat[3:]).all()


def test_inject_anomalies_is_seeded_documented_and_non_overlapping():
    series = sine(600)
    first = inject_anomalies(series, spikes=4, level_shifts=2, flat_lines=2, start=300, seed=7)
    again = inject_anomalies(series, spikes=4, level_shifts=2, flat_lines=2, start=300, seed=7)
    other = inject_anomalies(series, spikes=4, level_shifts=2, flat_lines=2, start=300, seed=8)
    np.testing.assert_array_equal(first.values, again.values)
    assert first.events == again.events and first.events != other.events
    np.testing.assert_array_equal(first.values[:300], series[:300])           # the clean part is untouched
    assert [e["kind"] for e in first.events].count("spike") == 4 and len(first.events) == 8
    assert int(first.labels.sum()) == sum(e["length"] for e in first.events)
    scale = series[:300].std()
    for event in first.events:
        where = slice(event["start"], event["start"] + event["length"])
        assert event["start"] >= 300
        if event["kind"] == "flat_line":
            assert np.all(first.values[where] == series[event["start"] - 1])
        else:
            np.testing.assert_allclose(first.values[where] - series[where], event["size"] * scale, rtol=1e-3)
    starts = sorted((e["start"], e["length"]) for e in first.events)
    assert all(b >= a + n + 10 for (a, n), (b, _) in zip(starts, starts[1:]))  # at least `gap` steps apart
    assert first.kind_labels("spike").sum() == 4
    with pytest.raises(ConfigError, match="no room"):
        inject_anomalies(sine(40), level_shifts=5, start=20)


def test_repeat_vector_layer():
    layer = RepeatVector(3)
    out, mask = layer(torch.arange(4.0).reshape(2, 2))
    assert out.shape == (2, 3, 2) and mask is None
    assert torch.equal(out[1, 2], torch.tensor([2.0, 3.0]))
    with pytest.raises(ConfigError, match="RepeatVector.n=0."):
        RepeatVector(0)


@pytest.mark.data
@pytest.mark.slow
def test_melbourne_temperatures_injected_spikes_are_found(shared_data):
    from grukit.data.timeseries import read_series

    series = read_series(shared_data / "timeseries" / "daily-min-temperatures.csv", "Date", "Temp")
    values = series.values[:, 0]
    detector = AnomalyDetector(window=30, units=16, epochs=5, seed=0).fit(values[:2555])
    injected = inject_anomalies(values, spikes=10, start=2555, spike_size=(5.0, 6.0), seed=0)
    result = detector.evaluate(injected.values, injected.labels, test=len(values) - 2555)
    # clean days are flagged at about the calibrated rate, and 5-6 std spikes stand out
    assert result.scores["model"]["flagged"] <= 0.05 * len(result.steps) + 10
    assert result.scores["model"]["recall"] >= 0.8 and result.scores["model"]["roc_auc"] > 0.95
