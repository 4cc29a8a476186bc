"""Every task hands its training options to the training loop.

``distributed=`` (fit's argument): outside a torchrun launch, ``distributed=True`` stops with the
loop's ConfigError before any training. (Training under torchrun is tested in tests/train and,
through the tasks, by the command line's --nproc test.)

``precision=`` (the task's config): "mixed_bfloat16" trains the recurrent layer in grukit's bfloat16
mode. Oracles: a global forward hook records whether the mode was on in each grukit recurrent
layer's forward during fit, and the trained weights must differ from float32 training's (the mode
rounds the products, so the same seed gives other weights). That ``fit(precision=...)`` computes
exactly the mode is tested in tests/train.
"""

import numpy as np
import pytest
import torch

from grukit.errors import ConfigError
from grukit.nn import bfloat16
from grukit.nn.recurrent import RecurrentLayer
from grukit.tasks import (AnomalyDetector, CharLM, Forecaster, NextStepDensity, SequenceClassifier,
                          TextClassifier)

RNG = np.random.default_rng(0)
SERIES = np.sin(np.arange(120) / 4.0) + 0.1 * RNG.standard_normal(120)
SEQUENCES = [RNG.standard_normal((5, 2)) for _ in range(8)]
ROLLS = [(RNG.random((6, 4)) > 0.5).astype(np.float32) for _ in range(4)]

# task name -> (constructor, fit): one epoch on tiny data; options go to the constructor, fit_options to fit
CASES = {
    "forecaster": (lambda **o: Forecaster(lookback=8, horizon=1, epochs=1, **o), lambda t, **f: t.fit(SERIES, **f)),
    "anomaly": (lambda **o: AnomalyDetector(window=8, epochs=1, **o), lambda t, **f: t.fit(SERIES, **f)),
    "char_lm": (lambda **o: CharLM(sequence_length=8, units=4, epochs=1, **o),
                lambda t, **f: t.fit("hello world! " * 20, **f)),
    "text": (lambda **o: TextClassifier(epochs=1, validation=0, patience=None, **o),
             lambda t, **f: t.fit(["good fun", "a bore"] * 8, ["pos", "neg"] * 8, **f)),
    "sequence": (lambda **o: SequenceClassifier(units=4, folds=None, epochs=1, **o),
                 lambda t, **f: t.fit(SEQUENCES, [0, 1] * 4, **f)),
    "density": (lambda **o: NextStepDensity(epochs=1, patience=None, validation=0, **o),
                lambda t, **f: t.fit(ROLLS, **f)),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_fit_passes_distributed_to_the_training_loop(task, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    build, fit = CASES[task]
    with pytest.raises(ConfigError, match="torchrun"):
        fit(build(), distributed=True)


def _trained(task: str, precision: str):
    """The task fitted in ``precision``, and whether the mode was on in each recurrent forward during fit."""
    seen = []

    def record(module, inputs):
        if isinstance(module, RecurrentLayer) and module.training:
            seen.append(bfloat16.enabled())

    build, fit = CASES[task]
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        trained = fit(build(precision=precision))
    finally:
        hook.remove()
    return trained, seen


@pytest.mark.filterwarnings("ignore:precision=.mixed_bfloat16. on a CPU without BF16 units")
@pytest.mark.parametrize("task", sorted(CASES))
def test_precision_trains_the_recurrent_layer_in_the_bfloat16_mode(task):
    plain, plain_seen = _trained(task, "float32")
    mixed, mixed_seen = _trained(task, "mixed_bfloat16")
    assert plain_seen and not any(plain_seen)
    assert mixed_seen and all(mixed_seen)
    plain_weights, mixed_weights = plain.model.state_dict(), mixed.model.state_dict()
    assert plain_weights.keys() == mixed_weights.keys()
    assert any(not torch.equal(plain_weights[k], mixed_weights[k]) for k in plain_weights)
    assert mixed.config.precision == "mixed_bfloat16"
    assert type(mixed).from_config(mixed.config.to_dict()).config.precision == "mixed_bfloat16"


@pytest.mark.parametrize("task", sorted(CASES))
def test_an_unknown_precision_is_refused_before_training(task):
    build, _ = CASES[task]
    with pytest.raises(ConfigError, match="mixed_bfloat16"):
        build(precision="bfloat16")
