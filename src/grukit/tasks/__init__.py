"""grukit.tasks: task objects over grukit.models, each with its data handling, baselines and save/load.

- ``Forecaster``: windowed multi-step forecasting of a series with a GRU (or LSTM, RNN, MGU, minGRU),
  scored beside last-value, seasonal-naive and linear-autoregression baselines (MAE, RMSE, sMAPE, MASE).
- ``AnomalyDetector``: per-time-step anomaly scores from a recurrent forecaster's or sequence
  autoencoder's error, a threshold calibrated on normal data, scored beside a rolling z-score and a
  seasonal-naive error; ``inject_anomalies`` for synthetic test anomalies.
- ``CharLM``: character-level language model (Embedding -> GRU -> Dense per step), bits per
  character beside unigram and bigram baselines, O(length) sampling through the streaming kernels.
- ``TextClassifier``: text classification / sentiment from raw strings (tokenizer fitted on the training
  texts, padding, optional pretrained embeddings, optional Bidirectional), scored with accuracy,
  precision, recall, F1 and ROC-AUC beside the majority class.
- ``SequenceClassifier``: variable-length multivariate sequences (lists of ``(T_i, C)`` arrays or a
  ``TimeSeriesDataset``) -> class names: standardisation fitted on the training frames, padding masked,
  epochs chosen by cross-validation (the JapaneseVowels recipe); accuracy and macro precision/recall/F1.
- ``NextStepDensity``: binary multi-label sequences (piano rolls): a Bernoulli per note for the next
  frame, NLL per time step (frames pooled) beside the per-note frequency, O(n) ``sample`` through the
  streaming kernels.
- ``baselines``: those baselines and ``forecast_scores``.
- ``base``: ``Task`` (save/load plumbing) and the ``cell=`` name -> layer class mapping.

Names are imported on first use, so ``import grukit.tasks`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Forecaster": "forecaster", "ForecasterConfig": "forecaster", "Evaluation": "forecaster",
    "last_value": "baselines", "seasonal_naive": "baselines", "LinearAutoregression": "baselines",
    "forecast_scores": "baselines",
    "TextClassifier": "text_classifier", "TextClassifierConfig": "text_classifier",
    "TextEvaluation": "text_classifier",
    "AnomalyDetector": "anomaly", "AnomalyConfig": "anomaly", "AnomalyEvaluation": "anomaly",
    "inject_anomalies": "anomaly", "InjectedAnomalies": "anomaly",
    "CharLM": "char_lm", "CharLMConfig": "char_lm", "CharLMEvaluation": "char_lm", "CharNgram": "char_lm",
    "SequenceClassifier": "sequence_classifier", "SequenceClassifierConfig": "sequence_classifier",
    "SequenceEvaluation": "sequence_classifier",
    "NextStepDensity": "next_step_density", "NextStepDensityConfig": "next_step_density",
    "DensityEvaluation": "next_step_density",
    "Task": "base", "cell_class": "base", "recurrent_layer": "base", "CELLS": "base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'grukit.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"grukit.tasks.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
