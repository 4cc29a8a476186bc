"""ONNX Runtime's GRU / LSTM / RNN operator with a grukit layer's weights (inference only)."""

from __future__ import annotations

import numpy as np


def available() -> str | None:
    """None if onnx and onnxruntime import, else why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def session_and_feed(layer, x_batch_first: np.ndarray, threads: int):
    """An ONNX Runtime session of one recurrent node and its input feed.

    The node reads time-major X (T, N, I) (transposed here, outside the timing) and produces Y
    and Y_h like the grukit layer. Returns (run, thread settings): run() runs the session once.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from grukit.nn.convert import onnx_operator, onnx_weights

    op_type, attributes = onnx_operator(layer)
    weights = onnx_weights(layer)
    x = np.ascontiguousarray(x_batch_first.transpose(1, 0, 2).astype(np.float32))
    T, N, I = x.shape
    outputs = ["Y", "Y_h"] + (["Y_c"] if op_type == "LSTM" else [])
    node = helper.make_node(op_type, ["X", "W", "R", "B"], outputs, **attributes)
    initializers = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel())
                    for k, v in weights.items()]
    graph = helper.make_graph(
        [node], "recurrent", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, I])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * (4 if name == "Y" else 3))
         for name in outputs], initializers)
    # IR version 10 (onnx 1.16): newer onnx packages write versions older runtimes refuse.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=10)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads spin by default and would steal the CPU from the next timed call.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"X": x}

    def run():
        return session.run(None, feed)

    thread_info = {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
                   "allow_spinning": 0, "providers": session.get_providers()}
    return run, thread_info
