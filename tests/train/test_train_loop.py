"""fit / evaluate / predict against a hand-written torch loop, determinism, Keras's data semantics
(validation_split, class_weight), NaN handling, resume, optimizers and bad input."""

import warnings

import numpy as np
import pytest
import torch

from grukit.errors import ConfigError, DataError, TrainingError
from grukit.train import (SGD, Adam, AdamW, RMSprop, evaluate, fit, get_optimizer, load_training_state, predict,
                          save_training_state)
from grukit.train.batches import epoch_seed, sequence_lengths, batch_indices
from grukit.train.optimizers import KerasRMSprop, OptimizerSpec


def make_data(n=96, features=5, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, features)).astype(np.float32)
    y = (x @ g.normal(size=(features, 1)) + 0.1 * g.normal(size=(n, 1))).astype(np.float32)
    return x, y


def make_model(seed=0, features=5, out=1, final=None):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(features, 8), torch.nn.Tanh(), torch.nn.Linear(8, out)]
    return torch.nn.Sequential(*layers, *([final] if final is not None else []))


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


@pytest.mark.parametrize("spec, torch_optimizer", [
    (SGD(learning_rate=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (Adam(learning_rate=0.01), lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-7)),
    (RMSprop(learning_rate=0.005), lambda p: KerasRMSprop(p, lr=0.005, rho=0.9, epsilon=1e-7)),
])
def test_fit_equals_a_hand_written_loop(spec, torch_optimizer):
    x, y = make_data()
    seed, epochs, batch_size = 7, 3, 16
    model = make_model()
    history = fit(model, x, y, loss="mse", optimizer=spec, epochs=epochs, batch_size=batch_size, seed=seed, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]

    reference = make_model()
    optimizer = torch_optimizer(reference.parameters())
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        for index in order.split(batch_size):
            optimizer.zero_grad()
            loss = ((reference(xt[index]) - yt[index]) ** 2).mean()
            loss.backward()
            optimizer.step()
    assert_same_weights(weights(model), weights(reference))


def test_same_seed_gives_identical_runs_and_other_seed_differs():
    x, y = make_data()
    runs = []
    for seed in (3, 3, 4):
        model = make_model()
        torch.manual_seed(123)  # the global RNG must not matter
        history = fit(model, x, y, loss="mse", optimizer="adam", epochs=2, seed=seed, verbose=0)
        runs.append((weights(model), history.history["loss"]))
    assert_same_weights(runs[0][0], runs[1][0], atol=0)
    assert runs[0][1] == runs[1][1]
    assert runs[0][1] != runs[2][1]


def test_dropout_is_reproducible_and_global_rng_untouched():
    x, y = make_data()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
        before = torch.random.get_rng_state()
        fit(model, x, y, loss="mse", optimizer="adam", epochs=2, seed=1, verbose=0)
        assert torch.equal(before, torch.random.get_rng_state())
        results.append(weights(model))
    assert_same_weights(*results, atol=0)


def test_validation_split_takes_the_last_fraction_before_shuffling():
    x, y = make_data(n=50)
    model = make_model()
    history = fit(model, x, y, loss="mse", optimizer="sgd", epochs=1, validation_split=0.2, verbose=0, seed=0)
    expected = evaluate(model, x[40:], y[40:], loss="mse")["loss"]
    assert history.history["val_loss"][0] == pytest.approx(expected, rel=1e-6)
    assert history.params["samples"] == 40


def test_validation_data_with_metrics_and_history_shape():
    x, y = make_data()
    labels = (y > 0).astype(np.float32)
    model = make_model(final=torch.nn.Sigmoid())
    history = fit(model, x, labels, loss="binary_crossentropy", optimizer=Adam(0.02), metrics=["accuracy", "auc"],
                  epochs=3, validation_data=(x[:20], labels[:20]), verbose=0, seed=0)
    assert history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"}
    assert all(len(v) == 3 for v in history.history.values())
    result = evaluate(model, x[:20], labels[:20], loss="binary_crossentropy", metrics=["accuracy", "auc"])
    assert result["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-6)
    assert result["val_accuracy" if False else "accuracy"] == history.history["val_accuracy"][-1]
    assert history.history["accuracy"][-1] > 0.6


def test_class_weight_changes_the_loss_exactly_as_keras_defines():
    """Keras: weight_i = class_weight[y_i]; loss = sum(w_i * l_i) / N per batch."""
    x, y = make_data(n=32)
    labels = (y > 0).astype(np.float32)
    class_weight = {0: 0.25, 1: 3.0}
    model = make_model(final=torch.nn.Sigmoid())
    start = weights(model)
    fit(model, x, labels, loss="binary_crossentropy", optimizer=SGD(0.1), epochs=1, batch_size=32,
        class_weight=class_weight, shuffle=False, verbose=0)
    reference = make_model(final=torch.nn.Sigmoid())
    reference.load_state_dict(start)
    p = reference(torch.from_numpy(x)).clamp(1e-7, 1 - 1e-7)
    t = torch.from_numpy(labels)
    per_sample = (-(t * p.log() + (1 - t) * (1 - p).log())).mean(-1)
    w = torch.tensor([class_weight[int(v)] for v in labels.ravel()])
    ((per_sample * w).sum() / 32).backward()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter -= 0.1 * parameter.grad
    assert_same_weights(weights(model), weights(reference))
    # the same as passing the weights as sample_weight
    other = make_model(final=torch.nn.Sigmoid())
    other.load_state_dict(start)
    fit(other, x, labels, loss="binary_crossentropy", optimizer=SGD(0.1), epochs=1, batch_size=32,
        sample_weight=w.numpy(), shuffle=False, verbose=0)
    assert_same_weights(weights(model), weights(other), atol=0)


def test_nan_loss_raises_naming_epoch_and_batch_and_keeps_last_good_weights():
    x, y = make_data(n=64)
    x[40] = 1e30  # the 3rd batch of 16 (shuffle=False): the squared error overflows float32 to inf
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    snapshots = []

    from grukit.train import Callback

    class Recorder(Callback):
        def on_batch_end(self, batch, logs=None):
            snapshots.append(weights(self.model))

    with pytest.raises(TrainingError) as error:
        fit(model, x, y, loss="mse", optimizer=SGD(0.01), epochs=2, batch_size=16, shuffle=False, verbose=0,
            callbacks=[Recorder()])
    message = str(error.value)
    assert "epoch 1, batch 3" in message and "not applied" in message
    assert len(snapshots) == 2
    assert_same_weights(weights(model), snapshots[-1], atol=0)
    assert all(torch.isfinite(v).all() for v in weights(model).values())


def test_nan_gradient_with_a_finite_loss_raises_and_keeps_the_weights():
    x, y = make_data(n=32)
    model = torch.nn.Linear(5, 1)
    with torch.no_grad():   # output 0 everywhere: sqrt's gradient there is infinite, the loss finite
        model.weight.zero_()
        model.bias.zero_()
    with pytest.raises(TrainingError, match="gradients became NaN or infinite at epoch 1, batch 1 of 2"):
        fit(model, x, y, loss="mse", optimizer=SGD(0.01), epochs=1, batch_size=16, shuffle=False, verbose=0,
            forward=lambda m, xs: m(*xs).abs().sqrt())
    assert not model.weight.any() and not model.bias.any()


def test_multi_input_and_forward_hook_and_predict_types():
    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 1), torch.nn.Linear(2, 1)

        def forward(self, first, second):
            return self.a(first) + self.b(second), "extra"

    g = np.random.default_rng(1)
    x1, x2 = g.normal(size=(40, 3)), g.normal(size=(40, 2))
    y = x1[:, :1] - x2[:, 1:]
    model = TwoInputs()
    history = fit(model, (x1, x2), y, loss="mse", optimizer=Adam(0.05), epochs=5, verbose=0, seed=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    calls = []

    def forward(m, xs):
        calls.append(len(xs))
        return m(*xs)[0]

    out = predict(model, (x1, x2), forward=forward, batch_size=16)
    assert isinstance(out, np.ndarray) and out.shape == (40, 1) and calls == [2, 2, 2]
    tensor_out = predict(model, (torch.tensor(x1, dtype=torch.float32), torch.tensor(x2, dtype=torch.float32)))
    assert isinstance(tensor_out, torch.Tensor)
    np.testing.assert_allclose(out, tensor_out.numpy(), rtol=1e-6)
    assert model.training  # mode restored


def test_stop_training_flag_and_initial_epoch():
    x, y = make_data()
    from grukit.train import Callback

    class StopAfterTwo(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                self.model.stop_training = True

    history = fit(make_model(), x, y, loss="mse", optimizer="sgd", epochs=10, initial_epoch=2, verbose=0,
                  callbacks=[StopAfterTwo()])
    assert history.epoch == [2, 3]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    x, y = make_data()
    full = make_model()
    full_history = fit(full, x, y, loss="mse", optimizer=Adam(0.01), epochs=3, seed=5, verbose=0)

    first = make_model()
    history = fit(first, x, y, loss="mse", optimizer=Adam(0.01), epochs=2, seed=5, verbose=0)
    path = tmp_path / "state.safetensors"
    save_training_state(path, first, history.optimizer, epoch=2, history=history.history)

    resumed = make_model(seed=99)  # different weights: all must come from the file
    optimizer = Adam(0.01).create(resumed.parameters())
    state = load_training_state(path, resumed, optimizer)
    assert state.epoch == 2
    history = fit(resumed, x, y, loss="mse", optimizer=optimizer, epochs=3, initial_epoch=state.epoch, seed=5,
                  verbose=0, history=state.history)
    assert_same_weights(weights(full), weights(resumed), atol=1e-6)
    assert history.epoch == [0, 1, 2]
    np.testing.assert_allclose(history.history["loss"], full_history.history["loss"], rtol=1e-6)


def test_training_state_checkpoint_callback_resumes_after_a_kill(tmp_path):
    from grukit.train import TrainingStateCheckpoint
    x, y = make_data()
    full = make_model()
    fit(full, x, y, loss="mse", optimizer=SGD(0.05, momentum=0.9), epochs=3, seed=2, verbose=0)

    path = tmp_path / "run" / "state.safetensors"
    killed = make_model()

    from grukit.train import Callback

    class Kill(Callback):
        def on_batch_end(self, batch, logs=None):
            if self.params and len(self.history.epoch) == 2 and batch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(killed, x, y, loss="mse", optimizer=SGD(0.05, momentum=0.9), epochs=3, seed=2, verbose=0,
            callbacks=[TrainingStateCheckpoint(path), Kill()])
    resumed = make_model(seed=1)
    optimizer = SGD(0.05, momentum=0.9).create(resumed.parameters())
    state = load_training_state(path, resumed, optimizer)
    assert state.epoch == 2 and len(state.history["loss"]) == 2
    fit(resumed, x, y, loss="mse", optimizer=optimizer, epochs=3, initial_epoch=state.epoch, seed=2, verbose=0)
    assert_same_weights(weights(full), weights(resumed))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_training_state_raises_and_changes_nothing(tmp_path, damage):
    model = make_model()
    optimizer = Adam().create(model.parameters())
    path = tmp_path / "state.safetensors"
    save_training_state(path, model, optimizer, epoch=1, history={"loss": [1.0]})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 40 + data[40:],
                      "empty": b""}[damage])
    other = make_model(seed=3)
    before = weights(other)
    with pytest.raises(DataError, match="truncated|damaged|not a grukit"):
        load_training_state(path, other, Adam().create(other.parameters()))
    assert_same_weights(before, weights(other), atol=0)


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model = make_model()
    path = tmp_path / "state.safetensors"
    save_training_state(path, model, None, epoch=1)
    good = path.read_bytes()
    import grukit.train.state as state_module

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(state_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_training_state(path, make_model(seed=4), None, epoch=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]  # no temp file left behind


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"y": np.zeros((10, 1))}, DataError, "same number of samples"),
    ({"validation_split": 1.0}, ConfigError, "[0, 1)"),
    ({"validation_split": -0.1}, ConfigError, "[0, 1)"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"epochs": -1}, ConfigError, "epochs"),
    ({"loss": "nope"}, ConfigError, "mse"),
    ({"optimizer": "adamx"}, ConfigError, "rmsprop"),
    ({"metrics": ["accuracy", "accuracy"]}, ConfigError, "unique"),
    ({"class_weight": {0: 1.0}, "sample_weight": np.ones(96)}, ConfigError, "not both"),
    ({"sample_weight": np.ones(95)}, DataError, "sample_weight has 95"),
    ({"verbose": 3}, ConfigError, "verbose"),
    ({"precision": "bfloat16"}, ConfigError, "mixed_bfloat16"),
])
def test_bad_arguments_raise_helpful_errors(kwargs, error, fragment):
    x, y = make_data()
    arguments = {"y": y, "loss": "mse", "optimizer": "sgd", "verbose": 0, **kwargs}
    with pytest.raises(error) as raised:
        fit(make_model(), x, **arguments)
    assert fragment in str(raised.value)


@pytest.mark.parametrize("n, split, fragment", [(1, 0.5, "no training data"), (0, 0.0, "empty")])
def test_empty_or_split_away_data(n, split, fragment):
    x, y = make_data(n=max(n, 1))
    with pytest.raises(DataError, match=fragment):
        fit(make_model(), x[:n], y[:n], loss="mse", optimizer="sgd", validation_split=split, verbose=0)


def test_nan_in_inputs_is_a_data_error():
    x, y = make_data()
    x[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fit(make_model(), x, y, loss="mse", optimizer="sgd", verbose=0)


@pytest.mark.parametrize("spec", [Adam(learning_rate=3e-4, beta_2=0.99, global_clipnorm=1.0),
                                  SGD(momentum=0.9, nesterov=True, clipnorm=0.5), RMSprop(rho=0.8),
                                  AdamW(weight_decay=0.01)])
def test_optimizer_specs_round_trip_and_create(spec):
    assert OptimizerSpec.from_dict(spec.to_dict()) == spec
    assert get_optimizer(spec.to_dict()) == spec
    optimizer = spec.create(make_model().parameters())
    assert optimizer.param_groups[0]["lr"] == spec.learning_rate


def test_keras_defaults_and_names():
    assert get_optimizer("adam") == Adam(learning_rate=1e-3, epsilon=1e-7)
    assert get_optimizer("SGD").learning_rate == 0.01
    assert get_optimizer("rmsprop").rho == 0.9
    assert get_optimizer("adamw").weight_decay == 0.004
    optimizer = torch.optim.SGD(make_model().parameters(), lr=0.1)
    assert get_optimizer(optimizer).create() is optimizer
    with pytest.raises(ConfigError, match="nesterov"):
        SGD(nesterov=True)


@pytest.mark.parametrize("kind", ["clipnorm", "global_clipnorm"])
def test_gradient_clipping_matches_torch_utilities(kind):
    x, y = make_data(n=16)
    x *= 100  # large gradients
    model, reference = make_model(), make_model()
    fit(model, x, y, loss="mse", optimizer=SGD(0.01, **{kind: 0.5}), epochs=1, batch_size=16, shuffle=False, verbose=0)
    loss = ((reference(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean()
    loss.backward()
    parameters = list(reference.parameters())
    if kind == "global_clipnorm":
        torch.nn.utils.clip_grad_norm_(parameters, 0.5)
    else:
        for p in parameters:
            torch.nn.utils.clip_grad_norm_([p], 0.5)
    with torch.no_grad():
        for p in parameters:
            p -= 0.01 * p.grad
    assert_same_weights(weights(model), weights(reference))


def test_bucket_by_length_groups_similar_lengths_and_shuffles_batches():
    g = np.random.default_rng(0)
    lengths = g.integers(1, 30, size=200)
    ids = np.zeros((200, 30), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, 30 - length:] = g.integers(1, 50, size=length)  # pre-padding, as Keras's pad_sequences
    measured = sequence_lengths(torch.from_numpy(ids))
    np.testing.assert_array_equal(measured.numpy(), lengths)
    orders = []
    for epoch in range(2):
        generator = torch.Generator().manual_seed(epoch_seed(0, epoch))
        batches = batch_indices(200, 16, shuffle=True, generator=generator, lengths=measured)
        assert sorted(torch.cat(batches).tolist()) == list(range(200))
        spreads = [int(measured[b].max() - measured[b].min()) for b in batches]
        assert max(spreads) <= 3
        orders.append([int(b[0]) for b in batches])
    assert orders[0] != orders[1]

    class Mean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding, self.out = torch.nn.Embedding(50, 4), torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.out(self.embedding(x).mean(1))

    y = (lengths > 15).astype(np.float32)[:, None]
    history = fit(Mean(), ids, y, loss="mse", optimizer="adam", epochs=2, bucket_by_length=True, seed=0, verbose=0)
    assert len(history.history["loss"]) == 2


def test_lazy_model_is_built_before_the_optimizer_is_created():
    x, y = make_data()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    history = fit(model, x, y, loss="mse", optimizer=Adam(0.01), epochs=3, verbose=0, seed=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert len(history.optimizer.param_groups[0]["params"]) == 4


def test_verbose_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    x, y = make_data()
    fit(make_model(), x, y, loss="mse", optimizer="sgd", epochs=2, metrics=["mae"], verbose=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2") and "mae:" in lines[1]
    fit(make_model(), x, y, loss="mse", optimizer="sgd", epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_progress_bar_on_a_terminal_then_a_summary_line():
    import io

    from grukit.train import ProgressLogger

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    x, y = make_data()
    fit(make_model(), x, y, loss="mse", optimizer="sgd", epochs=2, verbose=0, callbacks=[ProgressLogger(1, stream)])
    text = stream.getvalue()
    assert "━" in text and "3/3" in text  # rich's bar, 96 samples / 32 per batch
    assert text.count("Epoch 2/2 - 3 steps - loss: ") == 1


def test_positional_arguments_follow_keras_order():
    assert Adam(1e-2, 0.8) == Adam(learning_rate=1e-2, beta_1=0.8)
    assert SGD(0.1, 0.9) == SGD(learning_rate=0.1, momentum=0.9)
    assert AdamW(1e-3, 0.01).weight_decay == 0.01
    assert RMSprop(1e-3, 0.8).rho == 0.8


class _Forecaster(torch.nn.Module):
    """GRU(16) -> Linear(1) on the last step, on (N, T, 1) windows."""

    def __init__(self):
        super().__init__()
        from grukit.nn import GRU
        torch.manual_seed(0)
        self.gru = GRU(1, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


@pytest.mark.parametrize("backend,warns", [("mkl", True), ("fallback", True), ("torch", False)])
def test_mixed_bfloat16_fit_warns_where_the_cpu_has_no_bf16_units(backend, warns, monkeypatch):
    from grukit.layers import GRU, Dense, Input
    from grukit.models import Sequential
    from grukit.nn import bfloat16
    monkeypatch.setattr(bfloat16, "BACKEND", backend)
    x, y = np.zeros((4, 3, 1), np.float32), np.zeros((4, 1), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(_Forecaster(), x, y, loss="mse", optimizer="sgd", epochs=0, verbose=0, precision="mixed_bfloat16")
        fit(_Forecaster(), x, y, loss="mse", optimizer="sgd", epochs=0, verbose=0)
        model = Sequential([Input((3, 1)), GRU(2), Dense(1)])   # through Sequential.fit too
        model.compile("sgd", "mse")
        model.fit(x, y, epochs=0, verbose=0, precision="mixed_bfloat16")
    ours = [w for w in caught if "BF16 units" in str(w.message)]
    assert len(ours) == (2 if warns else 0)
    assert all("precision='float32'" in str(w.message) for w in ours)
    assert all(w.filename == __file__ for w in ours)   # it points at the caller's line, not at grukit


@pytest.mark.filterwarnings("ignore:precision=.mixed_bfloat16. on a CPU without BF16 units")
def test_mixed_bfloat16_fit_equals_a_hand_written_loop_in_the_mode_and_differs_from_float32():
    """``precision="mixed_bfloat16"`` is exactly the hand-written loop with the forward inside
    grukit.nn.bfloat16.mode(); float32 training gives other weights; predict and evaluate follow."""
    from grukit.nn import bfloat16
    g = np.random.default_rng(0)
    series = np.sin(np.arange(400) / 6.0) + 0.1 * g.normal(size=400)
    x = np.stack([series[i:i + 20] for i in range(300)])[..., None].astype(np.float32)
    y = series[20:320, None].astype(np.float32)
    seed, epochs, batch_size = 5, 2, 32
    mixed = _Forecaster()
    fit(mixed, x, y, loss="mse", optimizer=SGD(learning_rate=0.1), epochs=epochs, batch_size=batch_size, seed=seed,
        verbose=0, precision="mixed_bfloat16")
    plain = _Forecaster()
    fit(plain, x, y, loss="mse", optimizer=SGD(learning_rate=0.1), epochs=epochs, batch_size=batch_size, seed=seed,
        verbose=0)

    reference = _Forecaster()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        for index in order.split(batch_size):
            optimizer.zero_grad()
            with bfloat16.mode():
                prediction = reference(xt[index])
            ((prediction - yt[index]) ** 2).mean().backward()
            optimizer.step()
    assert_same_weights(weights(mixed), weights(reference), atol=0)
    difference = max((a - b).abs().max().item() for a, b in zip(weights(mixed).values(), weights(plain).values()))
    assert difference > 1e-5
    with bfloat16.mode():
        expected = reference(xt).detach().numpy()
    np.testing.assert_array_equal(predict(mixed, x, precision="mixed_bfloat16"), expected)
    assert not np.array_equal(predict(mixed, x), expected)
    loss = evaluate(mixed, x, y, loss="mse", precision="mixed_bfloat16", batch_size=len(x))["loss"]
    assert loss == pytest.approx(float(((expected - y) ** 2).mean()), rel=1e-6)


def keras_rmsprop_steps(w, grads, lr, rho, epsilon, momentum, centered):
    """Keras 3's RMSprop.update_step, transcribed in numpy (float64)."""
    v, m, s = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        denominator = v + epsilon
        if centered:
            m = rho * m + (1 - rho) * g
            denominator = denominator - m * m
        increment = lr * g / np.sqrt(denominator)
        if momentum:
            s = momentum * s + increment
            w = w - s
        else:
            w = w - increment
    return w


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.5, True), (0.9, False)])
def test_rmsprop_is_keras_s_update(momentum, centered):
    """Keras divides by sqrt(v + eps), torch by sqrt(v) + eps: with small gradients the two differ
    by far more than eps (grukit followed torch before)."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(scale=scale, size=(3, 4)) for scale in (1e-3, 1e-4, 1.0, 1e-3)]
    w0 = rng.normal(size=(3, 4))
    param = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    optimizer = RMSprop(learning_rate=0.01, rho=0.8, momentum=momentum, centered=centered).create([param])
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        optimizer.step()
    want = keras_rmsprop_steps(w0, grads, 0.01, 0.8, 1e-7, momentum, centered)
    np.testing.assert_allclose(param.detach().numpy(), want, rtol=1e-12, atol=1e-15)
