"""Task files and the configs behind them: a damaged or edited task.json, or one beside the model of
another save, is a DataError naming the files and the fix; a misspelled config keyword names the
closest valid one; seeds out of range are refused up front; saved files get the permissions open()
gives (0o666 & ~umask) and an interrupted write leaves the previous file whole."""

import dataclasses
import json
import os
import re
import shutil
import stat

import numpy as np
import pytest
import torch

from grukit import layers
from grukit.data import _files
from grukit.errors import ConfigError, DataError
from grukit.models import Sequential
from grukit.models import load as load_model
from grukit.tasks import (AnomalyDetector, CharLM, Forecaster, NextStepDensity, SequenceClassifier,
                          TextClassifier, inject_anomalies)
from grukit.tasks.anomaly import AnomalyConfig
from grukit.errors import ConfigKeywordError
from grukit.tasks.char_lm import CharLMConfig
from grukit.tasks.forecaster import ForecasterConfig
from grukit.tasks.next_step_density import NextStepDensityConfig
from grukit.tasks.sequence_classifier import SequenceClassifierConfig
from grukit.tasks.text_classifier import TextClassifierConfig
from grukit.train.state import load_training_state, load_weights, save_training_state, save_weights

TASKS = [Forecaster, AnomalyDetector, CharLM, NextStepDensity, SequenceClassifier, TextClassifier]
CONFIGS = [ForecasterConfig, AnomalyConfig, CharLMConfig, NextStepDensityConfig, SequenceClassifierConfig,
           TextClassifierConfig]
SERIES = 20 + 0.2 * np.arange(60) + 3 * np.sin(2 * np.pi * np.arange(60) / 6)


def forecaster(**options):
    settings = dict(lookback=8, horizon=3, units=8, season=6, epochs=1, batch_size=16, seed=0)
    settings.update(options)
    return Forecaster(**settings).fit(SERIES)


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """Three saves: a GRU(8) (seed 0), an LSTM(16), and a GRU(8) with other weights (seed 1)."""
    root = tmp_path_factory.mktemp("saves")
    return {"gru8": forecaster().save(root / "gru8"), "lstm16": forecaster(cell="lstm", units=16).save(root / "lstm16"),
            "gru8_seed1": forecaster(seed=1).save(root / "gru8_seed1")}


@pytest.fixture
def folder(saves, tmp_path):
    """A fresh copy of the GRU(8) save to damage."""
    return shutil.copytree(saves["gru8"], tmp_path / "run")


def edit_record(folder, change):
    path = folder / "task.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


# -- 1. task.json checked whole, and against the model beside it --------------------------------------

def test_an_intact_save_still_loads_and_predicts_identically(saves):
    original = forecaster()
    np.testing.assert_array_equal(Forecaster.load(saves["gru8"]).predict(SERIES), original.predict(SERIES))


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.pop("config"), r"is not a saved task: expected a JSON object with the keys .*'config'"),
    (lambda r: r.pop("state"), r"is not a saved task: expected a JSON object with the keys .*'state'"),
    (lambda r: r.pop("format_version"), r"is not a saved task"),
    (lambda r: r.__setitem__("config", [1, 2]), r"its 'config' is not a valid Forecaster config .*expected a dict"),
    (lambda r: r["config"].__setitem__("lookbak", 3),
     r"its 'config' is not a valid Forecaster config .*unknown field 'lookbak' \(did you mean 'lookback'\?\)"),
    (lambda r: r["config"].__setitem__("lookback", "eight"), r"its 'config' is not a valid Forecaster config"),
    (lambda r: r["config"].__setitem__("cell", "transformer"), r"its 'config' is not a valid Forecaster config"),
    (lambda r: r["state"].pop("scaler"), r"its 'state' is not what a fitted Forecaster saves \(KeyError: 'scaler'\)"),
    (lambda r: r["state"].__setitem__("columns", 5), r"its 'state' is not what a fitted Forecaster saves \(TypeError"),
    (lambda r: r.__setitem__("task", "Transformer"), r"holds task 'Transformer', which is not a grukit task"),
    (lambda r: r.__setitem__("task", ["Forecaster"]), r"holds task \['Forecaster'\], which is not a grukit task"),
], ids=["no config", "no state", "no format_version", "config a list", "config keyword misspelled",
        "config value of a wrong type", "config cell unknown", "state key missing", "state value of a wrong type",
        "unknown task kind", "task kind not a string"])
def test_a_structurally_wrong_task_file_is_a_data_error_naming_file_and_fix(folder, damage, message):
    edit_record(folder, damage)
    with pytest.raises(DataError, match=message) as caught:
        Forecaster.load(folder)
    text = str(caught.value)
    assert str(folder / "task.json") in text
    assert "fit the Forecaster again and save it with .save(directory)" in text


def test_a_task_file_that_is_not_an_object_is_a_data_error(folder):
    (folder / "task.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"task\.json is not a saved task: .* found a JSON list"):
        Forecaster.load(folder)


def test_another_grukit_task_still_points_at_its_own_class(folder):
    edit_record(folder, lambda r: r.__setitem__("task", "TextClassifier"))
    with pytest.raises(DataError, match=r"holds a 'TextClassifier', not a Forecaster; load it with TextClassifier"):
        Forecaster.load(folder)


@pytest.mark.parametrize("moved", ["task.json", "model"])
def test_files_of_saves_with_other_layers_are_refused_naming_both(saves, folder, moved):
    """task.json of the LSTM(16) beside the GRU(8) model, or the LSTM(16) model beside the GRU(8) task.json."""
    names = ["task.json"] if moved == "task.json" else ["config.json", "model.safetensors"]
    for name in names:
        shutil.copy(saves["lstm16"] / name, folder / name)
    expected, found = ("LSTM(16)", "GRU(8)") if moved == "task.json" else ("GRU(8)", "LSTM(16)")
    expected, found = re.escape(expected), re.escape(found)
    with pytest.raises(DataError, match=rf"describes a Forecaster with {expected}, but the model in .* has {found}: "
                                        r"the task file and the model come from different saves") as caught:
        Forecaster.load(folder)
    assert all(str(folder / name) in str(caught.value) for name in ("task.json", "config.json", "model.safetensors"))


def test_files_of_saves_with_the_same_layers_but_other_weights_are_refused(saves, folder):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saves["gru8_seed1"] / name, folder / name)
    load_model(folder)  # the model's own two files agree with each other
    with pytest.raises(DataError, match=r"task\.json was saved with other weights than .*model\.safetensors"):
        Forecaster.load(folder)


def test_a_task_file_saved_without_the_checksum_still_loads(saves, folder):
    edit_record(folder, lambda r: r.pop("weights_sha256"))
    np.testing.assert_array_equal(Forecaster.load(folder).predict(SERIES),
                                  Forecaster.load(saves["gru8"]).predict(SERIES))


def test_weights_that_do_not_fit_an_unchecksummed_config_are_a_data_error_not_a_torch_traceback(saves, tmp_path):
    folder = shutil.copytree(saves["gru8"], tmp_path / "run")
    shutil.copy(forecaster(units=12).save(tmp_path / "gru12") / "model.safetensors", folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config.pop("weights_sha256")  # as configs written before the checksum existed
    (folder / "config.json").write_text(json.dumps(config))
    named = (r"model\.safetensors' does not fit this model: .*wrong shapes \[.*weight_hh_l0.*\]; it does not "
             r"belong with .*config\.json: put the two files of one save together")
    with pytest.raises(DataError, match=named):
        Forecaster.load(folder)
    with pytest.raises(DataError, match=named):   # the model alone, as grukit.models.load reads it
        load_model(folder)


# -- 2. a misspelled config keyword names the closest valid one --------------------------------------

def test_a_misspelled_task_keyword_is_a_config_error_and_still_a_type_error():
    with pytest.raises(ConfigKeywordError) as caught:
        Forecaster(lookbak=12)
    error = caught.value
    assert isinstance(error, ConfigError) and isinstance(error, TypeError)
    assert "unknown keyword 'lookbak' (did you mean 'lookback'?)" in str(error)
    assert "valid keywords: lookback, horizon, cell, units" in str(error)
    with pytest.raises(TypeError, match="did you mean 'lookback'"):  # callers catching TypeError keep working
        ForecasterConfig(lookbak=12)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.__name__)
def test_every_task_names_the_closest_keyword(task):
    with pytest.raises(ConfigKeywordError, match=r"unknown keyword 'eopchs' \(did you mean 'epochs'\?\); valid "
                                                 r"keywords: .*\bseed\b"):
        task(eopchs=3)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_lists_its_keywords_and_several_unknown_are_all_named(config):
    with pytest.raises(ConfigKeywordError) as caught:
        config(sead=1, zzz=2)
    text = str(caught.value)
    assert text.startswith(f"{config.__name__}: unknown keywords 'sead' (did you mean 'seed'?), 'zzz';")
    valid = text.split("valid keywords: ")[1].split(", ")
    assert valid == [field.name for field in dataclasses.fields(config)]


# -- 3. seeds out of range are refused where tasks take them -----------------------------------------

@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("seed", [-1, 2 ** 32, True, 1.5, "0", np.int64(7)])
def test_a_seed_out_of_range_is_a_config_error_naming_the_range(task, seed):
    with pytest.raises(ConfigError, match=rf"{re.escape(f'seed={seed!r}')} is not valid; expected an int in "
                                          r"\[0, 2\*\*32 - 1\] \(= \[0, 4294967295\]"):
        task(seed=seed)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("seed", [0, 2 ** 32 - 1])
def test_seeds_in_range_are_accepted(task, seed):
    assert task(seed=seed).config.seed == seed


def test_sampling_seeds_are_checked_too():
    with pytest.raises(ConfigError, match=r"inject_anomalies: seed=-1 is not valid"):
        inject_anomalies(SERIES, spikes=1, seed=-1)
    lm = CharLM(sequence_length=8, units=4, embedding_dim=4, epochs=1, validation=0).fit("a cat sat on a mat. " * 4)
    with pytest.raises(ConfigError, match=r"CharLM\.generate: seed=-1 is not valid; expected an int in .* or None"):
        lm.generate("a ", 5, seed=-1)
    assert lm.generate("a ", 5, seed=2 ** 32 - 1) == lm.generate("a ", 5, seed=2 ** 32 - 1)
    rolls = [np.eye(3, dtype=np.float32)[np.arange(9) % 3]] * 3
    density = NextStepDensity(units=4, epochs=1, patience=None, validation=0).fit(rolls)
    with pytest.raises(ConfigError, match=r"NextStepDensity\.sample: seed=4294967296 is not valid"):
        density.sample(4, seed=2 ** 32)


# -- 4. saved files: the usual permissions, written atomically through one helper ---------------------

@pytest.fixture
def umask():
    """Set a umask for the test (os.umask is process-wide: always put the old one back)."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)],
                         ids=["umask 022", "umask 027", "umask 077"])
def test_saved_task_model_and_checkpoint_files_follow_the_umask(umask, tmp_path, mask, expected):
    umask(mask)
    task = forecaster()
    folder = task.save(tmp_path / "run")
    for name in ("task.json", "config.json", "model.safetensors"):
        assert mode(folder / name) == expected, name
    save_weights(tmp_path / "weights.safetensors", task.model)
    save_training_state(tmp_path / "state.safetensors", task.model, torch.optim.Adam(task.model.parameters()), 1)
    assert mode(tmp_path / "weights.safetensors") == expected
    assert mode(tmp_path / "state.safetensors") == expected
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "task.json"]


def test_the_umask_is_read_without_being_changed(umask):
    umask(0o027)
    assert _files._umask() == 0o027 and os.umask(0o027) == 0o027


def test_rewriting_a_file_keeps_its_permissions_as_open_does(umask, tmp_path):
    path = tmp_path / "vocabulary.json"
    _files.atomic_write_text(path, "{}")
    os.chmod(path, 0o640)  # the user chose its permissions
    _files.atomic_write_text(path, '{"a": 1}')
    assert mode(path) == 0o640 and path.read_text() == '{"a": 1}'


def test_an_exception_while_writing_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "data.bin"
    _files.atomic_write_bytes(path, b"old content")

    def half_then_fail(handle):
        handle.write(b"new con")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _files.atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old content" and os.listdir(tmp_path) == ["data.bin"]


def test_interrupted_model_task_and_checkpoint_saves_leave_the_previous_files(tmp_path, monkeypatch):
    task = forecaster()
    folder = task.save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    checkpoint = save_training_state(tmp_path / "state.safetensors", task.model, None, 1)
    weights = save_weights(tmp_path / "weights.safetensors", task.model)
    other = Sequential([layers.Input((8, 1)), layers.GRU(8), layers.Dense(3)])  # other weights, same shapes

    def fail(descriptor):
        raise OSError("interrupted")

    monkeypatch.setattr(_files.os, "fsync", fail)  # every grukit save goes through this one helper
    task.model = other
    for save in (lambda: task.save(folder), lambda: other.save(folder),
                 lambda: save_training_state(checkpoint, other, None, 2), lambda: save_weights(weights, other)):
        with pytest.raises(OSError, match="interrupted"):
            save()
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary left behind either
    restored = Forecaster.load(folder)
    np.testing.assert_array_equal(restored.predict(SERIES), forecaster().predict(SERIES))
    assert load_training_state(checkpoint, other).epoch == 1
    load_weights(weights, other)
    for name, value in restored.model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], value, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["run", "state.safetensors", "weights.safetensors"]
