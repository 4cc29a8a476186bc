"""SequenceClassifier: a tiny synthetic task learnt, padding invariance, the scaler fitted on training data
only, epochs chosen by cross-validation, class names, save/load, other cells, bad input; JapaneseVowels."""

import numpy as np
import pytest

from grukit.data import TimeSeriesDataset
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.tasks import SequenceClassifier


def make(count, seed, offset=5.0):
    """Sequences of 3 channels and 3..14 steps around ``offset``; class: sign of channel 0's mean."""
    rng = np.random.default_rng(seed)
    sequences = [rng.normal(size=(int(rng.integers(3, 15)), 3)) + offset for _ in range(count)]
    labels = ["up" if s[:, 0].mean() > offset else "down" for s in sequences]
    return sequences, labels


def tiny(**options):
    settings = dict(units=12, epochs=15, folds=None, batch_size=16, learning_rate=1e-2, seed=0)
    settings.update(options)
    return SequenceClassifier(**settings)


@pytest.fixture(scope="module")
def trained(_one_thread):
    return tiny().fit(*make(160, seed=0))


def test_the_sign_of_a_channel_mean_is_learned(trained):
    sequences, labels = make(100, seed=1)
    result = trained.evaluate(sequences, labels)
    assert result.scores["accuracy"] >= 0.9
    assert set(result.scores) == {"accuracy", "precision", "recall", "f1"}
    assert result.scores["f1"] >= 0.85 and result.majority < 0.7
    assert trained.classes == ["down", "up"]
    predicted = trained.predict(sequences)
    assert predicted.shape == (100,) and set(predicted) <= {"up", "down"}
    assert np.mean(predicted == np.array(labels)) == pytest.approx(result.scores["accuracy"])
    probabilities = trained.predict_proba(sequences)
    assert probabilities.shape == (100, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    stack = [type(layer).__name__ for layer in trained.model.layers]
    assert stack == ["GRU", "Dropout", "Dense"]
    assert "| GRU(12) |" in result.table() and "majority class" in result.table()


def test_padding_never_changes_a_prediction(trained):
    sequences, _ = make(6, seed=2)
    lengths = np.array([len(s) for s in sequences])
    rng = np.random.default_rng(3)
    zeros = np.zeros((6, 20, 3))
    junk = rng.normal(size=(6, 30, 3)) * 100
    for i, sequence in enumerate(sequences):
        zeros[i, :len(sequence)] = sequence
        junk[i, :len(sequence)] = sequence
    from_list = trained.predict_proba(sequences)
    assert np.array_equal(trained.predict_proba(zeros, lengths=lengths), from_list)
    assert np.array_equal(trained.predict_proba(junk, lengths=lengths), from_list)   # what follows is ignored
    # alone or beside longer sequences (other batch shapes): the same up to float rounding
    alone = np.concatenate([trained.predict_proba([s]) for s in sequences])
    assert np.allclose(alone, from_list, atol=1e-6, rtol=0)


def test_the_scaler_is_fitted_on_the_training_frames_only(trained):
    sequences, _ = make(160, seed=0)
    frames = np.concatenate(sequences)
    assert np.allclose(trained.scaler.center, frames.mean(axis=0))
    assert np.allclose(trained.scaler.scaler.scale_, frames.std(axis=0))
    shifted, labels = make(40, seed=4, offset=50.0)
    before = trained.scaler.to_dict()
    trained.evaluate(shifted, labels)
    trained.predict(shifted)
    assert trained.scaler.to_dict() == before                           # test data never refits it
    steps, x = trained.encode(shifted)
    first = x[0, :int(steps[0].sum())]
    assert np.allclose(first, (shifted[0] - frames.mean(axis=0)) / frames.std(axis=0), atol=1e-5)


def test_cross_validation_chooses_the_epoch_count(_one_thread):
    sequences, labels = make(60, seed=5)
    classifier = tiny(epochs=6, folds=3).fit(sequences, labels)
    assert len(classifier.cv_curve) == 6
    assert classifier.chosen_epochs == int(np.argmin(classifier.cv_curve)) + 1
    assert len(classifier.history.history["loss"]) == classifier.chosen_epochs


def test_save_and_load_predict_identically(trained, tmp_path):
    sequences, _ = make(20, seed=6)
    trained.save(tmp_path / "model")
    loaded = SequenceClassifier.load(tmp_path / "model")
    assert np.array_equal(loaded.predict_proba(sequences), trained.predict_proba(sequences))
    assert loaded.classes == trained.classes and loaded.config == trained.config
    assert loaded.scaler.to_dict() == trained.scaler.to_dict()


def test_a_time_series_dataset_keeps_its_class_names_and_int_labels_stay_ints(_one_thread):
    sequences, labels = make(60, seed=7)
    names = ("up", "down")                                      # header order, not sorted
    dataset = TimeSeriesDataset(sequences, np.array([names.index(label) for label in labels]), names)
    classifier = tiny(epochs=2).fit(dataset)
    assert classifier.classes == ["up", "down"]
    assert classifier.evaluate(dataset).actual.tolist() == [names.index(label) for label in labels]
    assert set(classifier.predict(dataset)) <= set(names)
    numbered = tiny(epochs=2).fit(sequences, [int(label == "up") for label in labels])
    assert numbered.classes == [0, 1] and numbered.predict(sequences[:3]).dtype.kind == "i"


@pytest.mark.parametrize("cell", ["lstm", "rnn", "mgu", "mingru"])
def test_other_cells(cell):
    sequences, labels = make(40, seed=8)
    classifier = tiny(cell=cell, epochs=2).fit(sequences, labels)
    assert classifier.predict_proba(sequences).shape == (40, 2)


def test_bad_input_gets_clear_errors(trained):
    sequences, labels = make(10, seed=9)
    with pytest.raises(DataError, match="no sequences"):
        tiny().fit([], [])
    with pytest.raises(DataError, match="only one class"):
        tiny().fit(sequences, ["up"] * 10)
    ragged = list(sequences)
    ragged[3] = np.zeros((5, 4))
    with pytest.raises(ShapeError, match=r"sequences\[3\] has 4 channels but sequences\[0\] has 3"):
        tiny().fit(ragged, labels)
    holey = [s.copy() for s in sequences]
    holey[7][2, 1] = np.nan
    with pytest.raises(DataError, match=r"sequences\[7\] holds NaN.*step 2, channel 1"):
        tiny().fit(holey, labels)
    with pytest.raises(DataError, match=r"sequences\[2\] is empty"):
        trained.predict(sequences[:2] + [np.zeros((0, 3))])
    with pytest.raises(DataError, match="10 sequences but 9 labels"):
        tiny().fit(sequences, labels[:9])
    with pytest.raises(DataError, match="'sideways': 1"):
        trained.evaluate(sequences, labels[:9] + ["sideways"])
    with pytest.raises(ShapeError, match="2 channels, the classifier was fitted on 3"):
        trained.predict([np.zeros((4, 2))])
    with pytest.raises(ShapeError, match=r"\(N, T, C\)"):
        trained.predict(np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="lengths= goes with a padded array"):
        trained.predict(sequences, lengths=[3] * 10)
    with pytest.raises(DataError, match="too few for folds=5"):
        SequenceClassifier().fit(sequences[:4], ["up", "down"] * 2)
    with pytest.raises(ConfigError, match=r"predict_proba\(\) before fit"):
        tiny().predict(sequences)
    for options, pattern in (({"units": 0}, "units=0"), ({"folds": 1}, "folds=1"), ({"dropout": 1.0}, "dropout=1.0"),
                             ({"cell": "tcn"}, "cell='tcn'"), ({"noise": -1}, "noise=-1")):
        with pytest.raises(ConfigError, match=pattern):
            SequenceClassifier(**options)


@pytest.mark.data
@pytest.mark.slow
def test_japanese_vowels_well_above_chance(shared_data):
    from grukit.data import read_ts

    folder = shared_data / "japanese-vowels"
    train, test = read_ts(folder / "JapaneseVowels_TRAIN.ts"), read_ts(folder / "JapaneseVowels_TEST.ts")
    classifier = SequenceClassifier(folds=None, epochs=10, seed=0).fit(train)
    result = classifier.evaluate(test)
    assert classifier.classes == list(train.class_names)
    assert result.scores["accuracy"] > 0.85 > 3 * result.majority         # 9 speakers: chance ~0.11
