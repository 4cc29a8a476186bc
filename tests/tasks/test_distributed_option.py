"""Every task's ``fit`` takes ``distributed=`` and hands it to the training loop: outside a torchrun
launch, ``distributed=True`` stops with the loop's ConfigError before any training. (Training under
torchrun is tested in tests/train and, through the tasks, by the command line's --nproc test.)"""

import numpy as np
import pytest

from grukit.errors import ConfigError
from grukit.tasks import (AnomalyDetector, CharLM, Forecaster, NextStepDensity, SequenceClassifier,
                          TextClassifier)

RNG = np.random.default_rng(0)
SERIES = np.sin(np.arange(120) / 4.0) + 0.1 * RNG.standard_normal(120)

CASES = {
    "forecaster": lambda d: Forecaster(lookback=8, horizon=1, epochs=1).fit(SERIES, distributed=d),
    "anomaly": lambda d: AnomalyDetector(window=8, epochs=1).fit(SERIES, distributed=d),
    "char_lm": lambda d: CharLM(sequence_length=8, units=4, epochs=1).fit("hello world! " * 20, distributed=d),
    "text": lambda d: TextClassifier(epochs=1, validation=0, patience=None).fit(["good fun", "a bore"] * 8, ["pos", "neg"] * 8,
                                                                 distributed=d),
    "sequence": lambda d: SequenceClassifier(units=4, folds=None, epochs=1).fit(
        [RNG.standard_normal((5, 2)) for _ in range(8)], [0, 1] * 4, distributed=d),
    "density": lambda d: NextStepDensity(epochs=1, patience=None, validation=0).fit(
        [(RNG.random((6, 4)) > 0.5).astype(np.float32) for _ in range(4)], distributed=d),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_fit_passes_distributed_to_the_training_loop(task, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        CASES[task](True)
