"""The tutorial sentiment model in Keras 3 on the JAX backend, for benchmarks.sentiment.

    keras.Sequential([keras.Input((200,)), keras.layers.Embedding(10_000, 128, mask_zero=...),
                      keras.layers.GRU(128), keras.layers.Dense(1, activation="sigmoid")])
    compile("adam", "binary_crossentropy", ["accuracy"]);
    fit(x, y, batch_size=32, validation_data=(x_val, y_val),
        callbacks=[EarlyStopping(monitor, patience=epochs, restore_best_weights=True)])

Runs in its own process (``python -m benchmarks.keras_sentiment JSON``) because the backend must be
chosen before Keras is imported. The request names an .npz of the arrays benchmarks.sentiment
made (x, y, x_val, y_val, x_test, y_test), so both see the same data. Its epoch time is first
measured on ``timed_batches`` batches of a throwaway model (after a compiling pass) and
extrapolated; the accuracy run follows only if ``epochs`` such epochs fit in ``budget_seconds``. Prints one JSON object on
stdout (the row), progress on stderr. Pinned to the first ``threads`` CPUs: XLA:CPU has no
thread-count option.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    os.environ["KERAS_BACKEND"] = "jax"          # before Keras is imported
    from .machine import pin_threads
    pinned = pin_threads(request["threads"])
    import jax
    import keras
    import numpy as np

    arrays = np.load(request["arrays"])
    data = {k: arrays[k] for k in arrays.files}

    def build():
        keras.utils.set_random_seed(request["seed"])
        model = keras.Sequential([
            keras.Input((request["maxlen"],), dtype="int32"),
            keras.layers.Embedding(request["vocabulary"], request["embedding"], mask_zero=request["mask_zero"]),
            keras.layers.GRU(request["units"]),
            keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
        return model

    # Speed first, on a throwaway model: two passes over the first `timed` batches; the first
    # compiles, the second is timed and extrapolated to a whole epoch.
    batch_size, epochs_wanted = request["batch_size"], request["epochs"]
    steps = -(-len(data["x"]) // batch_size)
    timed = min(request.get("timed_batches", 100), steps)
    probe = build()
    seconds = []

    class Stopwatch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    probe.fit(data["x"][:timed * batch_size].astype("int32"), data["y"][:timed * batch_size], epochs=2,
              batch_size=batch_size, shuffle=False, verbose=0, callbacks=[Stopwatch()])
    per_epoch = seconds[1] / timed * steps
    print(f"  keras GRU: {timed} batches in {seconds[1]:.1f} s (first pass with compilation {seconds[0]:.1f} s) "
          f"-> {per_epoch:.0f} s per epoch (extrapolated)", file=sys.stderr, flush=True)
    row = {"timed_batches": timed, "timed_seconds": seconds[1], "compile_pass_seconds": seconds[0],
           "extrapolated_seconds": per_epoch, "parameters": int(probe.count_params()),
           "backend": keras.backend.backend(), "keras": keras.__version__, "jax": jax.__version__,
           "cpus": pinned["cpus"], "epochs": []}
    budget = request.get("budget_seconds", 1800.0)
    if per_epoch * epochs_wanted > budget:
        row["not_run"] = (f"{epochs_wanted} epochs would take ~{per_epoch * epochs_wanted / 60:.0f} min "
                          f"(> --keras-budget {budget:.0f} s)")
        print(json.dumps(row))
        return 0
    del probe
    model = build()

    def test_eval():
        loss, accuracy = model.evaluate(data["x_test"].astype("int32"), data["y_test"], batch_size=256, verbose=0)
        return {"test_loss": float(loss), "test_accuracy": float(accuracy)}

    epochs = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = self.last_batch = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.last_batch = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            record = {"epoch": epoch + 1, "seconds": self.last_batch - self.start,
                      "seconds_with_validation": time.perf_counter() - self.start,
                      "train_loss": _float(logs.get("loss")), "train_accuracy": _float(logs.get("accuracy")),
                      "val_loss": _float(logs.get("val_loss")), "val_accuracy": _float(logs.get("val_accuracy"))}
            record.update(test_eval())
            epochs.append(record)
            val = (f", val loss {record['val_loss']:.4f} accuracy {record['val_accuracy']:.4f}"
                   if record["val_loss"] is not None else "")
            print(f"  keras GRU epoch {epoch + 1}: {record['seconds']:.1f} s{val}, "
                  f"test accuracy {record['test_accuracy']:.4f}", file=sys.stderr, flush=True)

    callbacks = [EpochClock()]
    validation = None
    if request["validate"]:
        validation = (data["x_val"].astype("int32"), data["y_val"])
        callbacks.append(keras.callbacks.EarlyStopping(monitor=request["monitor"], patience=request["epochs"],
                                                       restore_best_weights=True))
    model.fit(data["x"].astype("int32"), data["y"], epochs=request["epochs"], batch_size=request["batch_size"],
              validation_data=validation, callbacks=callbacks, verbose=0)
    row.update(epochs=epochs, note="first epoch includes XLA compilation")
    if validation is not None:
        values = [e[request["monitor"]] for e in epochs]
        best = min(values) if request["monitor"].endswith("loss") else max(values)
        row["selected_epoch"] = values.index(best) + 1
        row["selected_test_accuracy"] = test_eval()["test_accuracy"]
        print(f"  keras GRU: restored epoch {row['selected_epoch']}, test accuracy "
              f"{row['selected_test_accuracy']:.4f}", file=sys.stderr, flush=True)
    print(json.dumps(row))
    return 0


def _float(value):
    return None if value is None else float(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
