"""Fused CPU kernels (Numba) for one layer and direction of every grukit cell.

* :mod:`.api` — numpy entry points (torch-free): ``forward``, ``backward``,
  ``weight_grads``, ``step``, ``pack_weight``.
* :mod:`.function` — torch wrapper: ``fused_run_direction`` (autograd), ``fused_step``,
  ``supports``, ``CALLS`` (imports torch; import it explicitly).
* one module per cell family: :mod:`.gru`, :mod:`.lstm`, :mod:`.rnn`, :mod:`.mgu`,
  :mod:`.mingru`; shared helpers in :mod:`.common`; kept large arrays in :mod:`.buffers`; the
  row scatter-add of the embedded-token projection in :mod:`.rows`.
* the GEMMs: the per-step products' choice in :mod:`.products` (MKL through :mod:`.blas`, oneDNN's
  microkernel through :mod:`.onednn`, bfloat16 in :mod:`.bf16`); the backward's large float32 GEMMs
  on oneDNN's microkernel in :mod:`.backward_gemms`.
"""
