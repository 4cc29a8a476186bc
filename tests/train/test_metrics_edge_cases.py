"""Metric edge cases: ROC-AUC of labels holding one class is NaN on purpose, with one warning that
says why and how to fix the validation split; monitors on val_auc do not take NaN for progress."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from grukit import layers
from grukit.models import Sequential
from grukit.train import EarlyStopping, get_loss, get_metric
from grukit.train.callbacks import ModelCheckpoint

BINARY = get_loss("binary_crossentropy")
SPARSE = get_loss("sparse_categorical_crossentropy")


def caught_warnings(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    return result, [w for w in caught if "auc" in str(w.message)]


def test_two_classes_score_as_sklearn():
    truth, scores = np.array([0, 1, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.5, 0.9])
    metric = get_metric("auc", BINARY)
    assert metric(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)


@pytest.mark.parametrize("loss, truth, prob", [
    (BINARY, np.ones(6), np.linspace(0.1, 0.9, 6)),
    (BINARY, np.zeros((3, 2)), np.full((3, 2), 0.3)),                      # sequence outputs, per element
    (SPARSE, np.full(4, 2), np.full((4, 3), 1 / 3)),                         # one of three classes present
], ids=["binary", "binary sequences", "sparse three classes"])
def test_one_class_is_nan_with_one_warning_naming_the_fix(loss, truth, prob):
    metric = get_metric("auc", loss)
    value, first = caught_warnings(lambda: metric(truth, prob))
    assert math.isnan(value)
    assert len(first) == 1 and issubclass(first[0].category, UserWarning)
    text = str(first[0].message)
    assert f"labels hold one class only (all {truth.size} are class {int(truth.reshape(-1)[0])})" in text
    assert "the validation set holds one class" in text and "stratify=y" in text and "validation_split" in text
    assert first[0].filename == __file__  # points at the caller, not into grukit
    again, second = caught_warnings(lambda: metric(truth, prob))
    assert math.isnan(again) and second == []  # once per metric, not once per epoch


def test_fit_with_a_one_class_validation_set_logs_nan_warns_once_and_saves_no_best_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)               # both classes in training
    x_val, y_val = rng.normal(size=(16, 5, 2)).astype(np.float32), np.ones(16, np.float32)
    model = Sequential([layers.Input((5, 2)), layers.GRU(4), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["auc"])
    checkpoint = ModelCheckpoint(str(tmp_path / "best"), monitor="val_auc", save_best_only=True)
    history, caught = caught_warnings(lambda: model.fit(x, y, epochs=3, batch_size=16, seed=0, verbose=0,
                                                          validation_data=(x_val, y_val), callbacks=[checkpoint]))
    assert all(math.isnan(v) for v in history.history["val_auc"]) and len(history.history["val_auc"]) == 3
    assert all(0.0 <= v <= 1.0 for v in history.history["auc"])
    assert len(caught) == 1 and "all 16 are class 1" in str(caught[0].message)
    assert checkpoint.saved == [] and not (tmp_path / "best").exists()


def test_early_stopping_on_val_auc_does_not_record_nan_as_best():
    """A NaN first value (before the fix, taken as an improvement over no reference) would become the
    best, and no later value improves on NaN."""
    stopper = EarlyStopping(monitor="val_auc", patience=5)
    stopper.on_train_begin()
    stopper.on_epoch_end(0, {"val_auc": math.nan})
    stopper.on_epoch_end(1, {"val_auc": 0.7})
    assert stopper.best == 0.7 and stopper.wait == 0
