"""Data-parallel training with 2 processes (torchrun, gloo) equals one process over the same global
batches: the gradients of the first step, the final weights, and the logged losses; every process
trains on a disjoint shard of each batch. The script never leaves the process group itself, as a
user's need not: grukit leaves it at exit, before the interpreter's teardown."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import atexit, json, sys
    import torch
    import grukit.nn as gnn
    from grukit.train import loop
    from grukit.train.callbacks import Callback
    from grukit.train.optimizers import SGD

    out, distributed = sys.argv[1], sys.argv[2] == "1"
    torch.manual_seed(0)

    @atexit.register   # runs after grukit's own exit handler (atexit runs last-registered first)
    def record_exit_state():
        if distributed:
            with open(f"{out}.{rank}.exit", "w") as handle:
                handle.write("alive" if torch.distributed.is_initialized() else "destroyed")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = gnn.GRU(3, 8, batch_first=True, dtype=torch.float64)
            self.head = torch.nn.Linear(8, 1, dtype=torch.float64)

        def forward(self, x):
            return self.head(self.gru(x)[0][:, -1])

    model = Model()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(41, 7, 3, generator=generator, dtype=torch.float64)   # last global batch: 1 sample
    y = torch.randn(41, 1, generator=generator, dtype=torch.float64)
    ids = torch.arange(41)
    seen = []

    def forward(module, xs):
        # a custom forward sees the model itself (DDP runs it inside its own forward)
        assert module is model, type(module).__name__
        seen.extend(xs[1].tolist())
        return module(xs[0])

    class FirstGradients(Callback):
        grads = None
        def on_batch_end(self, batch, logs=None):
            if self.grads is None:
                self.grads = {n: p.grad.tolist() for n, p in model.named_parameters()}

    capture = FirstGradients()
    history = loop.fit(model, (x, ids), y, loss="mse", optimizer=SGD(learning_rate=0.1), epochs=3,
                       batch_size=10, seed=5, verbose=0, forward=forward, callbacks=[capture],
                       distributed=distributed)
    rank = torch.distributed.get_rank() if distributed else 0
    with open(f"{out}.{rank}.json", "w") as handle:
        json.dump({"weights": {n: p.tolist() for n, p in model.named_parameters()}, "grads": capture.grads,
                   "seen": seen, "loss": history.history["loss"]}, handle)
''')


def run(tmp_path, distributed):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / ("dist" if distributed else "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if distributed:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(script), str(out), "1"]
    else:
        command = [sys.executable, str(script), str(out), "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = 2 if distributed else 1
    if distributed:   # the script does not leave the process group itself: grukit does, at exit
        assert [open(f"{out}.{r}.exit").read() for r in range(ranks)] == ["destroyed"] * ranks
    return [json.loads(open(f"{out}.{r}.json").read()) for r in range(ranks)]


def test_two_processes_equal_one_process(tmp_path):
    (single,) = run(tmp_path, distributed=False)
    rank0, rank1 = run(tmp_path, distributed=True)
    for name, expected in single["weights"].items():
        for result in (rank0, rank1):
            torch.testing.assert_close(torch.tensor(result["grads"][name]), torch.tensor(single["grads"][name]),
                                       atol=1e-12, rtol=0)
            torch.testing.assert_close(torch.tensor(result["weights"][name]), torch.tensor(expected),
                                       atol=1e-10, rtol=0)
    for result in (rank0, rank1):
        assert result["loss"] == pytest.approx(single["loss"], abs=1e-12)
    # disjoint shards: in each epoch the two processes saw different samples, together all 41
    per_epoch = 41
    seen0, seen1 = rank0["seen"], rank1["seen"]
    # the rank without a sample in the last 1-sample batch runs that sample with zero weight
    assert len(seen0) == 3 * 21 and len(seen1) == 3 * 21
    for epoch in range(3):
        a = seen0[epoch * 21:(epoch + 1) * 21]
        b = seen1[epoch * 21:(epoch + 1) * 21]
        assert sorted(set(a) | set(b)) == list(range(per_epoch))
        assert len(set(a) & set(b)) <= 1  # only the zero-weight stand-in may repeat
