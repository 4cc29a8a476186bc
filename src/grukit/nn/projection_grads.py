"""The gradients of an input projection ``rows @ weight.T + bias``, shared by the layers' own
projection (recurrent._InputProjection) and the fused kernels' in-loop one (kernels.function)."""

from __future__ import annotations

import torch

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
    """grad @ weight, on the weight padded to PAD_COLUMNS columns when it has 2 to 15."""
    columns = weight.shape[1]
    if not 2 <= columns < PAD_COLUMNS:
        return grad @ weight
    padded = weight.new_zeros(weight.shape[0], PAD_COLUMNS)
    padded[:, :columns] = weight
    return (grad @ padded)[:, :columns].contiguous()


def projection_grads(rows: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, need_rows: bool,
                     need_weight: bool, need_bias: bool):
    """(grad rows, grad weight, grad bias) of ``rows @ weight.T + bias`` from the result's gradient
    ``grad`` (R, G); rows (R, I), weight (G, I). None for each one not needed."""
    grad_rows = _input_grad(grad, weight) if need_rows else None
    grad_weight = None
    if need_weight:
        grad_weight = (rows.t() @ grad).t() if rows.shape[1] <= NARROW_INPUT else grad.t() @ rows
    grad_bias = grad.sum(0) if need_bias else None
    return grad_rows, grad_weight, grad_bias
