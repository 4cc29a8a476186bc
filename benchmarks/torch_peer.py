"""grukit layers and their torch.nn twins (same weights), as callables to time.

A training step is: zero the gradients, forward, loss = mean squared error of the last step's
output against a fixed target, backward, one SGD step (Keras/JAX runs the same step).
"""

from __future__ import annotations

from collections import Counter

import torch

import grukit.nn as gnn
from grukit.nn import dispatch

from .scenarios import CELLS, Scenario

try:  # the fused kernels' spy counter, if this grukit has one
    from grukit.nn.kernels.function import CALLS as KERNEL_CALLS
except ImportError:  # pragma: no cover - kernels absent
    KERNEL_CALLS = None

LEARNING_RATE = 1e-3


def build_pair(cell: str, scenario: Scenario, seed: int = 0):
    """(grukit layer with kernel="auto", torch twin or None), same weights, batch_first."""
    spec = CELLS[cell]
    torch.manual_seed(seed)
    ours = getattr(gnn, spec["grukit"])(scenario.I, scenario.H, batch_first=True, kernel="auto")
    theirs = None
    if spec["torch"]:
        theirs = getattr(torch.nn, spec["torch"])(scenario.I, scenario.H, batch_first=True)
        ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def inputs(scenario: Scenario, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(scenario.B, scenario.T, scenario.I, generator=generator)
    target = torch.randn(scenario.B, scenario.H, generator=generator)
    return x, target


def last_output(result) -> torch.Tensor:
    return result[0][:, -1]


def inference_fn(layer, x):
    def run():
        with torch.no_grad():
            return layer(x)
    return run


def training_fn(layer, x, target, bfloat16: bool = False):
    """One SGD step on the MSE of the last step's output; ``bfloat16``: the forward under
    torch.autocast("cpu", dtype=torch.bfloat16) (grukit's bfloat16 mode), the loss in float32."""
    optimizer = torch.optim.SGD(layer.parameters(), lr=LEARNING_RATE)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            output = last_output(layer(x))
        loss = torch.nn.functional.mse_loss(output, target)
        loss.backward()
        optimizer.step()
        return loss
    return run


def dispatch_path(layer) -> str:
    """What the dispatcher chooses for layer 0, forward direction."""
    params, weights = layer._direction_weights(0, 0)
    return dispatch.choose_path(layer.kernel, layer.mode, params["weight_ih"].dtype,
                                params["weight_ih"].device, weights)


def snapshot_calls() -> Counter:
    return Counter(KERNEL_CALLS) if KERNEL_CALLS is not None else Counter()


def observed_path(before: Counter, calls: int, counters: tuple[str, ...], dispatcher: str) -> dict:
    """Which path ran over ``calls`` calls, from the kernels' spy counter.

    "fused" when every counter (e.g. "run" and "backward") rose by at least one per call,
    "reference" when none moved, "mixed" otherwise. Without a spy counter, the dispatcher's
    choice is reported and labelled as such.
    """
    if KERNEL_CALLS is None:
        return {"path": dispatcher, "evidence": "grukit.nn.dispatch.choose_path (no spy counter)"}
    rose = {name: KERNEL_CALLS[name] - before[name] for name in counters}
    if all(n >= calls for n in rose.values()):
        path = "fused"
    elif not any(rose.values()):
        path = "reference"
    else:
        path = "mixed"
    return {"path": path, "dispatch": dispatcher, "calls": calls,
            "evidence": f"grukit.nn.kernels.function.CALLS rose by {rose} over {calls} calls"}


def streamer_run_fn(layer, x):
    """grukit's streaming API over the whole input: layer.streamer().run(frames) from a zero
    state, frames (T, B, I) time first as numpy (converted once, outside the timing, as ONNX
    Runtime's feed is)."""
    streamer = layer.streamer(batch_size=x.shape[0])
    frames = x.transpose(0, 1).contiguous().numpy()

    def run():
        streamer.reset()
        return streamer.run(frames)
    return run


def step_fns(cell: str, ours, theirs, scenario: Scenario, count: int, seed: int = 2):
    """Per-step callables step(i): grukit's layer.step (torch tensors in and out), grukit's
    layer.streamer().step (numpy frames), and torch's matching *Cell."""
    xs = torch.randn(count + 200, 1, scenario.I, generator=torch.Generator().manual_seed(seed))
    state = {"ours": None, "theirs": None}

    @torch.no_grad()
    def ours_step(i):
        _, state["ours"] = ours.step(xs[i], state["ours"])

    streamer = ours.streamer()
    frames = xs[:, 0].numpy()

    def ours_stream(i):
        streamer.step(frames[i])

    functions = {"grukit": ours_step, "grukit-streamer": ours_stream}
    if theirs is not None:
        cell_module = getattr(torch.nn, CELLS[cell]["torch"] + "Cell")(scenario.I, scenario.H)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell_module, name).copy_(getattr(theirs, f"{name}_l0"))
        zeros = torch.zeros(1, scenario.H)
        state["theirs"] = (zeros, zeros.clone()) if cell == "lstm" else zeros

        @torch.no_grad()
        def theirs_step(i):
            state["theirs"] = cell_module(xs[i], state["theirs"])

        functions["torch"] = theirs_step
    return functions
