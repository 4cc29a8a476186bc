"""A model holding grukit layers under ``torch.compile``: TorchDynamo runs the layers eagerly (their
forward and step() are disabled for it, nn/dynamo.py: a spy inside them never sees Dynamo tracing),
and the compiled model gives eager's outputs and gradients, bit for bit. Without the mark Dynamo
traces into the layers (the spy sees it), and a compiled model whose first call in the process was
the compiled one failed inside Numba's dispatcher, which loads or compiles a kernel on its first
call. So the check runs in a fresh process, compiled call first. backend="eager" runs Dynamo's
tracing without code generation, which is the part that failed."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import grukit.nn as gnn
    from grukit.nn import recurrent
    assert "torch._dynamo" not in sys.modules, "import grukit.nn should not import TorchDynamo (nn/dynamo.py)"

    traced = []     # calls of the layers' internals that Dynamo traced instead of running eagerly
    state_tuple = recurrent._state_tuple
    def spy(state):
        traced.append(torch.compiler.is_compiling())
        return state_tuple(state)
    recurrent._state_tuple = spy

    class Model(torch.nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.inner = torch.nn.Linear(6, 8)
            self.recurrent = cell(8, 5, batch_first=True)
            self.head = torch.nn.Linear(5, 1)

        def forward(self, x):
            return self.head(self.recurrent(torch.tanh(self.inner(x)))[0][:, -1])

    def gradients(model):
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    for cell in (gnn.GRU, gnn.LSTM, gnn.RNN, gnn.MGU, gnn.MinGRU):
        torch.manual_seed(0)
        model = Model(cell)
        x = torch.randn(3, 7, 6)
        out = torch.compile(model, backend="eager")(x)    # first: the kernels load inside the compiled call
        out.sum().backward()
        compiled = gradients(model)
        model.zero_grad()
        eager = model(x)
        eager.sum().backward()
        assert torch.equal(out, eager), cell.__name__
        assert all(torch.equal(g, compiled[n]) for n, g in gradients(model).items()), cell.__name__

    layer = gnn.GRU(4, 6, num_layers=2).eval()
    frames = torch.randn(5, 2, 4)

    def run(frames):
        state, outputs = None, []
        for frame in frames:
            y, state = layer.step(frame, state)
            outputs.append(y)
        return torch.stack(outputs)

    with torch.no_grad():
        assert torch.equal(torch.compile(run, backend="eager")(frames), run(frames))
    assert traced and not any(traced), traced
    print("compiled models equal eager")
''')


def test_compiled_models_equal_eager_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled models equal eager" in result.stdout
