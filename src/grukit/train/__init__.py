"""grukit.train: the engine behind Keras-style compile / fit / evaluate / predict, for any torch module.

``fit(model, x, y, loss=..., optimizer=..., metrics=..., ...)`` trains any ``torch.nn.Module``
(``grukit.models.Sequential`` delegates to it); losses, optimizer specs, metrics (scikit-learn) and
callbacks follow Keras's names and semantics. See :mod:`grukit.train.loop` for the exact step.

Example::

    from grukit.train import fit, evaluate, EarlyStopping
    history = fit(model, x, y, loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"],
                  epochs=10, validation_split=0.2, seed=0, callbacks=[EarlyStopping(patience=2)])
    evaluate(model, x_test, y_test, loss="binary_crossentropy", metrics=["accuracy"])
"""

from .callbacks import (Callback, CSVLogger, EarlyStopping, History, JSONLLogger, LearningRateScheduler,
                        ModelCheckpoint, ProgressLogger, ReduceLROnPlateau, TrainingStateCheckpoint)
from .losses import Loss, get_loss
from .loop import default_forward, evaluate, fit, predict
from .metrics import Metric, get_metric
from .optimizers import SGD, Adam, AdamW, OptimizerSpec, RMSprop, get_optimizer
from .state import TrainingState, load_training_state, load_weights, save_training_state, save_weights

__all__ = ["fit", "evaluate", "predict", "default_forward", "History", "Callback", "EarlyStopping",
           "ModelCheckpoint", "ReduceLROnPlateau", "LearningRateScheduler", "CSVLogger", "JSONLLogger",
           "TrainingStateCheckpoint", "ProgressLogger", "Loss", "get_loss", "Metric", "get_metric", "OptimizerSpec",
           "Adam", "AdamW", "SGD", "RMSprop", "get_optimizer", "save_training_state", "load_training_state",
           "TrainingState", "save_weights", "load_weights"]
