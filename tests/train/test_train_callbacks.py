"""Callbacks through fit: EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, LearningRateScheduler,
CSV and JSONL logs, and the checkpoint left on disk when a loss turns NaN."""

import csv
import json

import numpy as np
import pytest
import torch

from grukit.errors import ConfigError, TrainingError
from grukit.train import (SGD, Callback, CSVLogger, EarlyStopping, JSONLLogger, LearningRateScheduler,
                          ModelCheckpoint, ReduceLROnPlateau, fit, load_weights)


def make_data(n=64, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32))


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 1)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Script(Callback):
    """Overwrites the monitored value with scripted numbers and records each epoch's weights."""

    def __init__(self, values, key="val_loss"):
        super().__init__()
        self.values, self.key, self.weights = values, key, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        self.weights.append(snapshot(self.model))


@pytest.mark.parametrize("values, patience, mode, stopped_after, best", [
    ([5.0, 3.0, 4.0, 4.5, 2.0, 1.0], 2, "auto", 4, 1),   # stops at epoch 3 (0-based), best epoch 1
    ([5.0, 3.0, 4.0, 2.0, 2.5, 2.6], 2, "min", 6, 3),
    ([0.1, 0.5, 0.4, 0.3, 0.9, 0.9], 1, "max", 3, 1),    # monitoring an "up" quantity
])
def test_early_stopping_restores_the_best_epoch(values, patience, mode, stopped_after, best):
    x, y = make_data()
    model = make_model()
    script = Script(values)
    stopper = EarlyStopping(monitor="val_loss", patience=patience, mode=mode, restore_best_weights=True)
    history = fit(model, x, y, loss="mse", optimizer=SGD(0.05), epochs=len(values), verbose=0,
                  callbacks=[script, stopper], seed=0)
    assert len(history.epoch) == stopped_after
    assert stopper.best_epoch == best
    for key, value in snapshot(model).items():
        assert torch.equal(value, script.weights[best][key])
    assert history.history["val_loss"] == values[:stopped_after]


def test_early_stopping_min_delta_and_accuracy_direction():
    stopper = EarlyStopping(monitor="val_accuracy", min_delta=0.05, patience=0)
    stopper.set_context(make_model(), None, None, {})
    stopper.on_train_begin()
    stopper.on_epoch_end(0, {"val_accuracy": 0.50})
    stopper.on_epoch_end(1, {"val_accuracy": 0.53})  # < min_delta better: no improvement
    assert stopper.model.stop_training
    with pytest.raises(ConfigError, match="mode='min'"):
        unknown = EarlyStopping(monitor="val_weirdness")
        unknown.set_context(make_model(), None, None, {})
        unknown.on_train_begin()
        unknown.on_epoch_end(0, {"val_weirdness": 1.0})


def test_model_checkpoint_save_best_only_writes_only_on_improvement(tmp_path):
    x, y = make_data()
    model = make_model()
    values = [3.0, 2.0, 2.5, 1.0, 1.5]
    script = Script(values)
    checkpoint = ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}-{val_loss:.1f}.safetensors", save_best_only=True)
    fit(model, x, y, loss="mse", optimizer=SGD(0.05), epochs=5, verbose=0, callbacks=[script, checkpoint], seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-01-3.0.safetensors", "ckpt-02-2.0.safetensors",
                                                          "ckpt-04-1.0.safetensors"]
    restored = make_model(seed=5)
    load_weights(tmp_path / "ckpt-04-1.0.safetensors", restored)
    for key, value in snapshot(restored).items():
        assert torch.equal(value, script.weights[3][key])


def test_model_checkpoint_every_epoch_uses_model_save_when_present(tmp_path):
    class Savable(torch.nn.Linear):
        saved = []

        def save(self, path):
            self.saved.append(path)

    x, y = make_data()
    torch.manual_seed(0)
    model = Savable(3, 1)
    fit(model, x, y, loss="mse", optimizer="sgd", epochs=3, verbose=0,
        callbacks=[ModelCheckpoint(str(tmp_path / "m{epoch}"), monitor="loss")])
    assert model.saved == [str(tmp_path / f"m{e}") for e in (1, 2, 3)]
    with pytest.raises(ConfigError, match="cannot format"):
        fit(make_model(), x, y, loss="mse", optimizer="sgd", verbose=0,
            callbacks=[ModelCheckpoint(str(tmp_path / "{val_nothing}"), monitor="loss")])


def test_nan_loss_leaves_the_last_good_checkpoint_on_disk(tmp_path):
    x, y = make_data(n=32)
    x_bad = x.copy()

    class BreakAfter(Callback):
        """From epoch 3 on the data feeds the model an overflow, as a diverging run would."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                x_source[:] = x_bad

    x_bad[5] = 1e30
    x_source = x.copy()
    model = make_model()
    path = tmp_path / "best.safetensors"
    recorder = Script([3.0, 2.0, 1.0, 0.5])

    class Feed(torch.nn.Module):  # reads the shared array so the data can turn bad mid-run
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, index):
            return self.inner(torch.from_numpy(x_source)[index.long()])

    wrapped = Feed(model)
    with pytest.raises(TrainingError, match=r"epoch 3, batch 1"):
        fit(wrapped, np.arange(32), y, loss="mse", optimizer=SGD(0.01), epochs=4, batch_size=32, shuffle=False,
            verbose=0, callbacks=[recorder, BreakAfter(), ModelCheckpoint(path, save_best_only=True)])
    on_disk = make_model(seed=3)
    load_weights(path, torch.nn.ModuleDict({"inner": on_disk}))
    for key, value in snapshot(on_disk).items():
        assert torch.equal(value, recorder.weights[1]["inner." + key])
        assert torch.equal(value, snapshot(model)[key])  # the NaN step was not applied


def test_reduce_lr_on_plateau_lowers_the_rate():
    x, y = make_data()
    model = make_model()
    script = Script([1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    reducer = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=0.02)
    history = fit(model, x, y, loss="mse", optimizer=SGD(0.1), epochs=9, verbose=0, callbacks=[script, reducer])
    # logs record the rate used during each epoch (before the callback changes it); the improvement
    # at epoch 4 resets the wait, so the second cut comes at epoch 6, the third (clamped) at epoch 8
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025])
    assert history.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # clamped at min_lr


@pytest.mark.parametrize("schedule, expected", [
    (lambda epoch, lr: lr * 0.5, [0.05, 0.025, 0.0125]),
    (lambda epoch: 0.1 / (epoch + 1), [0.1, 0.05, 0.1 / 3]),
])
def test_learning_rate_scheduler(schedule, expected):
    x, y = make_data()
    rates = []

    class Spy(Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 0:
                rates.append(self.optimizer.param_groups[0]["lr"])

    history = fit(make_model(), x, y, loss="mse", optimizer=SGD(0.1), epochs=3, verbose=0,
                  callbacks=[LearningRateScheduler(schedule), Spy()])
    assert rates == pytest.approx(expected)
    assert history.history["learning_rate"] == pytest.approx(expected)


def test_csv_and_jsonl_logs_parse(tmp_path):
    x, y = make_data()
    csv_path, jsonl_path = tmp_path / "log.csv", tmp_path / "logs" / "log.jsonl"
    history = fit(make_model(), x, y, loss="mse", optimizer="sgd", metrics=["mae"], epochs=3, validation_split=0.25,
                  verbose=0, callbacks=[CSVLogger(csv_path), JSONLLogger(jsonl_path)])
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["epoch", "loss", "mae", "val_loss", "val_mae"]
    assert [float(r["val_mae"]) for r in rows] == pytest.approx(history.history["val_mae"])
    records = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert [r["loss"] for r in records] == pytest.approx(history.history["loss"])
    # JSONL appends across runs; CSV starts over unless append=True
    fit(make_model(), x, y, loss="mse", optimizer="sgd", epochs=1, verbose=0,
        callbacks=[CSVLogger(csv_path, append=True), JSONLLogger(jsonl_path)])
    assert len(jsonl_path.read_text().splitlines()) == 4
    assert len(list(csv.DictReader(csv_path.open()))) == 4
    assert jsonl_path.read_text().endswith("\n") and csv_path.read_text().endswith("\n")


def test_jsonl_writes_non_finite_values_as_null(tmp_path):
    logger = JSONLLogger(tmp_path / "l.jsonl")
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 1.0, "val_auc": float("nan")})
    assert json.loads((tmp_path / "l.jsonl").read_text()) == {"epoch": 0, "loss": 1.0, "val_auc": None}
