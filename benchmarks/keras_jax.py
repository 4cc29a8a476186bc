"""Keras 3 on the JAX backend: one jitted training step (forward, MSE loss on the last output,
gradients, SGD update) of ``keras.layers.GRU/LSTM/SimpleRNN(H)`` fed (B, T, I) input.

Runs in its own process (``python -m benchmarks.keras_jax JSON``) because the backend must be
chosen before Keras is imported and grukit's tests use the torch backend. Its one argument is a
JSON request {"jobs": [{"cell", "layer", "scenario", "B", "T", "I", "H"}, ...], "settings": {...},
"threads": n, "learning_rate": lr}; it prints one JSON object on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import os
import sys


def _keras_step(layer_name: str, B: int, T: int, I: int, H: int, learning_rate: float):
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, I), batch_size=B), getattr(keras.layers, layer_name)(H)])
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((B, T, I), dtype=np.float32))
    y = jnp.asarray(rng.standard_normal((B, H), dtype=np.float32))

    def loss_fn(trainable, non_trainable, x, y):
        out, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return jnp.mean(jnp.square(out - y)), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def train_step(state, x, y):
        trainable, non_trainable, optimizer_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_vars)

    state = {"value": ([v.value for v in model.trainable_variables],
                       [v.value for v in model.non_trainable_variables],
                       [v.value for v in optimizer.variables])}

    def run():
        loss, state["value"] = train_step(state["value"], x, y)
        return loss, state["value"]

    return run, jax.block_until_ready


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    os.environ["KERAS_BACKEND"] = "jax"          # before Keras is imported
    from .machine import pin_threads
    threads = pin_threads(request["threads"])
    import jax
    import keras

    from .timing import Settings, measure_group
    settings = Settings.from_dict(request["settings"])
    results = []
    for job in request["jobs"]:
        print(f"  keras-jax {job['cell']} {job['scenario']} training "
              f"(B={job['B']}, T={job['T']}, I={job['I']}, H={job['H']})", file=sys.stderr, flush=True)
        run, sync = _keras_step(job["layer"], job["B"], job["T"], job["I"], job["H"],
                                request["learning_rate"])
        record = measure_group({"keras-jax": run}, settings, sync=sync)["keras-jax"]
        results.append({**job, **record})
    print(json.dumps({"results": results, "backend": keras.backend.backend(),
                      "devices": [str(d) for d in jax.devices()], "threads": threads,
                      "thread_note": "XLA:CPU has no intra-op thread-count option; the process is "
                                     "pinned to the same CPUs with sched_setaffinity"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
