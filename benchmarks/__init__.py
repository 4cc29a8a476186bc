"""Speed and memory benchmarks of grukit against torch.nn, ONNX Runtime and Keras 3 on JAX.

Run ``make bench`` (= ``python -m benchmarks.run``; ``--help`` lists the options). Results go to
``benchmarks/results/latest.json`` and ``latest.md``. Nothing here is imported by grukit or its
tests; importing this package is cheap (no torch, no JAX), so its subprocess entry points
(:mod:`.keras_jax`, :mod:`.memory`) start clean.
"""
