"""The gradients of an input projection ``rows @ weight.T + bias``, shared by the layers' own
projection (recurrent._InputProjection) and the fused kernels' in-loop one (kernels.function)."""

from __future__ import annotations

import numpy as np
import torch

from .embedded import time_major_rows
from .kernels import backward_gemms
from .kernels.common import set_threads

# torch's own (linear's) backward forms grad weight as grad^T @ rows, to match the transposed view
# of the weight, and MKL runs that (G, R) x (R, I) product 4-5x slower than (rows^T @ grad)^T for
# narrow inputs: 1.53 against 0.30 ms for the S3 LSTM's 3200 rows, G = 256, I = 10 (0.86 against
# 0.20 for the GRU's G = 192). From I = 32 on the two orders cost the same, and at I = 40 the
# transposed one is slower: inputs wider than NARROW_INPUT take linear's order.
NARROW_INPUT = 16


# MKL (torch's CPU build, measured on the Zen 4) runs the input's gradient grad @ weight slowly when
# the weight has 2 to 15 columns: (3200 x 256) by (256 x I) took 0.45-1.05 ms for those I, against
# 0.22 ms at I = 16 and 0.24-0.27 ms for the same product on the weight padded with zero columns to
# 16 (the result sliced back). In an S3 LSTM training step whose 10-feature input needs a gradient
# (a layer below it trains too), the step took 9.16 against 9.82 ms (one process, alternating).
PAD_COLUMNS = 16


def _input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad @ weight: through oneDNN's microkernel where backward_gemms takes it, else torch's matmul,
    on the weight padded to PAD_COLUMNS columns when it has 2 to 15."""
    operands = _numpy_operands(grad, weight)
    if operands is not None and backward_gemms.applies(*operands):
        set_threads(torch.get_num_threads())
        return torch.from_numpy(backward_gemms.product(*operands))
    columns = weight.shape[1]
    if not 2 <= columns < PAD_COLUMNS:
        return grad @ weight
    padded = weight.new_zeros(weight.shape[0], PAD_COLUMNS)
    padded[:, :columns] = weight
    return (grad @ padded)[:, :columns].contiguous()


def projection_grads(rows: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, need_rows: bool,
                     need_weight: bool, need_bias: bool):
    """(grad rows, grad weight, grad bias) of ``rows @ weight.T + bias`` from the result's gradient
    ``grad`` (R, G); rows (R, I), or steps (T, B, I) whose T * B rows grad holds in time-major order (see
    :func:`weight_gradient`); weight (G, I). None for each one not needed."""
    grad_rows = _input_grad(grad, weight) if need_rows else None
    grad_weight = None
    if need_weight:
        grad_weight = weight_gradient(grad, rows)
    grad_bias = grad.sum(0) if need_bias else None
    return grad_rows, grad_weight, grad_bias


def weight_gradient(grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """grad^T @ rows, C-contiguous: through oneDNN's microkernel on the kernels' threads where it is
    the faster GEMM (kernels/backward_gemms.py: 1.3-1.8x torch's matmul for S2 to S4, 1.2-2.0x for
    narrow inputs against torch's faster order), else torch's matmul in the faster of its two orders.
    rows may be steps (T, B, I), a batch-first input's transposed view, with grad (T * B, G) time-major:
    the microkernel reads them in place where they are the narrower operand (the one it transposes);
    otherwise they become time-major rows in a kept array first (embedded.time_major_rows)."""
    operands = _numpy_operands(grad, rows)
    takes = operands is not None and backward_gemms.applies_transposed(*operands)
    if rows.dim() == 3 and not (takes and rows.shape[2] <= grad.shape[1]):
        rows = time_major_rows(rows)
        if takes:   # the microkernel reads the copied rows as stored; torch's matmul takes the tensors
            operands = _numpy_operands(grad, rows)
    if takes:
        set_threads(torch.get_num_threads())
        return torch.from_numpy(np.ascontiguousarray(backward_gemms.transposed_product(*operands)))
    return (rows.t() @ grad).t() if rows.shape[1] <= NARROW_INPUT else grad.t() @ rows


def _numpy_operands(*tensors: torch.Tensor) -> tuple[np.ndarray, ...] | None:
    """The tensors as numpy arrays for backward_gemms, or None: float32 CPU tensors only, and only
    when the backward records no graph (``create_graph=True``, torch.func.grad: a double backward
    needs torch's own ops, and torch.func's wrapped tensors have no storage to read)."""
    if not backward_gemms.USABLE or torch.is_grad_enabled():
        return None
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    return tuple(t.detach().numpy() for t in tensors)
