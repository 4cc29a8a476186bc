"""NextStepDensity: a periodic roll learnt, the pooled NLL convention and the baseline, padding invariance,
sampling (seeded, through the streamer, equal to the full forward), save/load, bad input; JSB Chorales."""

import math
from unittest import mock

import numpy as np
import pytest

from grukit.data import frame_nll
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.nn.streaming import Streamer
from grukit.tasks import NextStepDensity

NOTES = 5


def staircase(length: int) -> np.ndarray:
    """Note t mod 5 and note (t + 2) mod 5 on in frame t: every frame is fixed by the one before."""
    roll = np.zeros((length, NOTES), dtype=np.float32)
    for t in range(length):
        roll[t, [t % NOTES, (t + 2) % NOTES]] = 1
    return roll


def tiny(**options):
    settings = dict(units=16, epochs=40, batch_size=4, learning_rate=2e-2, input_dropout=0.0, patience=None,
                    validation=0, seed=0)
    settings.update(options)
    return NextStepDensity(**settings)


ROLLS = [staircase(n) for n in (12, 15, 18, 20, 24, 30)]


@pytest.fixture(scope="module")
def learned(_one_thread):
    return tiny(epochs=80).fit(ROLLS)


@pytest.fixture(scope="module")
def rough(_one_thread):
    """Barely trained: its probabilities are far from 0 and 1, so samples vary with the seed."""
    return tiny(epochs=1, learning_rate=1e-3).fit(ROLLS)


def test_a_periodic_roll_is_learned_to_low_nll(learned):
    result = learned.evaluate([staircase(25), staircase(40)])
    model, baseline = result.scores["model"], result.scores["note_frequency"]
    assert model["nll"] < 0.1 and model["nll_after_first"] < 0.1
    assert baseline["nll"] == pytest.approx(5 * -(0.4 * math.log(0.4) + 0.6 * math.log(0.6)), abs=0.01)
    assert result.frames == 65 and result.sequences == 2
    assert np.array_equal(learned.predict_proba([staircase(30)])[0][:-1] > 0.5, staircase(30) > 0)
    assert np.mean(learned.sample(30, seed=0) == staircase(30)) >= 0.97      # Bernoulli draws: near certain
    stack = [type(layer).__name__ for layer in learned.model.layers]
    assert stack == ["GRU", "Dense"] and learned.model.layers[0].recurrent.reset_after is False
    assert learned.model.layers[0].units == 16 and NextStepDensity().config.units == 46


def test_nll_is_pooled_over_frames_and_matches_predict_proba(rough):
    rolls = [staircase(6), staircase(30)]
    probabilities = rough.predict_proba(rolls)
    assert [p.shape for p in probabilities] == [(7, NOTES), (31, NOTES)]     # row T: the frame after the roll
    per_frame = [frame_nll(p[:-1], r, from_logits=False, reduction="none")[0] for p, r in zip(probabilities, rolls)]
    pooled = sum(f.sum() for f in per_frame) / 36                         # total NLL / total frames
    mean_of_means = np.mean([f.mean() for f in per_frame])
    scores = rough.evaluate(rolls).scores["model"]
    assert scores["nll"] == pytest.approx(pooled, rel=1e-5)
    assert abs(pooled - mean_of_means) > 1e-3                             # the conventions differ here
    assert scores["nll_after_first"] == pytest.approx(sum(f[1:].sum() for f in per_frame) / 34, rel=1e-5)


def test_padding_never_changes_a_prediction(rough):
    short, long = staircase(7), staircase(40)
    alone = rough.predict_proba([short])[0]
    beside = rough.predict_proba([long, short, staircase(3)])[1]
    assert np.allclose(alone, beside, atol=1e-6, rtol=0)
    pair = rough.evaluate([short, long]).scores["model"]["nll"]
    parts = [rough.evaluate([r]).scores["model"]["nll"] for r in (short, long)]
    assert pair == pytest.approx((parts[0] * 7 + parts[1] * 40) / 47, rel=1e-5)


def test_sample_is_seeded_and_streams_one_step_per_frame(rough, monkeypatch):
    first = rough.sample(25, seed=3)
    assert first.shape == (25, NOTES) and set(np.unique(first)) <= {0.0, 1.0}
    assert np.array_equal(rough.sample(25, seed=3), first)
    assert any(not np.array_equal(rough.sample(25, seed=seed), first) for seed in (4, 5, 6))
    monkeypatch.setattr(rough.model, "forward", mock.Mock(side_effect=AssertionError("ran the whole roll")))
    with mock.patch.object(Streamer, "step", autospec=True, side_effect=Streamer.step) as spy:
        assert rough.sample(25, seed=3, prompt=staircase(4)).shape == (25, NOTES)
    assert spy.call_count == 4 + 25                                          # O(length): one step per frame
    assert {np.shape(call.args[1]) for call in spy.call_args_list} == {(NOTES,)}


def test_the_streaming_path_equals_the_full_forward(rough):
    roll = staircase(9)
    step = rough.streaming_step()
    head = rough.model.layers[-1].linear
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    inputs = np.concatenate([np.zeros((1, NOTES), np.float32), roll])
    streamed = np.array([1 / (1 + np.exp(-(weight @ step(frame) + bias))) for frame in inputs])
    assert np.allclose(streamed, rough.predict_proba([roll])[0], atol=1e-5)


def test_a_layer_the_streamer_does_not_cover_falls_back_to_step(_one_thread):
    model = tiny(epochs=1, cell_options={"activation": "relu", "reset_after": False}).fit(ROLLS[:2])
    with pytest.raises(ConfigError):
        model.model.layers[0].recurrent.streamer()
    assert np.array_equal(model.sample(10, seed=1), model.sample(10, seed=1))


@pytest.mark.parametrize("cell", ["lstm", "rnn", "mgu", "mingru"])
def test_other_cells(cell):
    model = tiny(cell=cell, epochs=1).fit(ROLLS[:2])
    assert model.config.cell_options == {}
    assert model.sample(5, seed=0).shape == (5, NOTES)


def test_validation_drives_early_stopping_and_the_learning_rate(_one_thread):
    model = tiny(epochs=4, patience=2, lr_patience=1, validation=2).fit(ROLLS)
    history = model.history.history
    assert len(history["val_nll"]) == len(history["learning_rate"]) == len(history["loss"]) <= 4
    given = tiny(epochs=2, patience=2).fit(ROLLS[:4], validation_rolls=ROLLS[4:])
    assert len(given.history.history["val_nll"]) == 2


def test_save_and_load_predict_and_sample_identically(rough, tmp_path):
    rough.save(tmp_path / "model")
    loaded = NextStepDensity.load(tmp_path / "model")
    assert np.array_equal(loaded.predict_proba([staircase(11)])[0], rough.predict_proba([staircase(11)])[0])
    assert np.array_equal(loaded.sample(20, seed=2), rough.sample(20, seed=2))
    assert loaded.evaluate(ROLLS).to_dict() == rough.evaluate(ROLLS).to_dict()


def test_bad_input_gets_clear_errors(rough):
    with pytest.raises(DataError, match="no sequences"):
        tiny().fit([])
    wrong = [staircase(5), staircase(6) * 0.5]
    with pytest.raises(DataError, match=r"sequences\[1\] holds 0\.5.*0/1"):
        tiny().fit(wrong)
    holey = [staircase(5), staircase(6)]
    holey[1][3, 2] = np.nan
    with pytest.raises(DataError, match=r"sequences\[1\] holds NaN.*step 3, channel 2"):
        tiny().fit(holey)
    with pytest.raises(ShapeError, match=r"sequences\[1\] has 4 channels but sequences\[0\] has 5"):
        tiny().fit([staircase(5), np.zeros((5, 4))])
    with pytest.raises(DataError, match=r"rolls\['train'\]"):
        tiny().fit({"train": ROLLS})
    with pytest.raises(ShapeError, match=r"\[roll\]"):
        rough.evaluate(staircase(5))
    with pytest.raises(ShapeError, match="4 notes, the model was fitted on 5"):
        rough.evaluate([np.zeros((5, 4))])
    with pytest.raises(DataError, match="leaving none to train on"):
        tiny(validation=2).fit(ROLLS[:2])
    with pytest.raises(ConfigError, match="length=-1"):
        rough.sample(-1)
    with pytest.raises(ConfigError, match=r"sample\(\) before fit"):
        tiny().sample(3)
    for options, pattern in (({"units": 0}, "units=0"), ({"input_dropout": 1.0}, "input_dropout=1.0"),
                             ({"lr_decay": 2.0}, "lr_decay=2.0"), ({"cell": "tcn"}, "cell='tcn'")):
        with pytest.raises(ConfigError, match=pattern):
            NextStepDensity(**options)


@pytest.mark.data
@pytest.mark.slow
def test_jsb_chorales_beat_the_per_note_frequency(shared_data):
    from grukit.data import read_piano_rolls

    rolls = read_piano_rolls(shared_data / "polyphonic-music" / "jsb_chorales.json.gz")
    model = NextStepDensity(epochs=25, patience=None, seed=0).fit(rolls["train"], validation_rolls=rolls["valid"])
    scores = model.evaluate(rolls["test"]).scores
    assert scores["note_frequency"]["nll"] == pytest.approx(11.06, abs=0.01)
    assert scores["model"]["nll"] < scores["note_frequency"]["nll"]
    assert model.sample(32, seed=0).shape == (32, 88)
