"""The per-step GEMM (kernels/blas.py): MKL from torch's build, or scipy's OpenBLAS without torch."""

import itertools
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from grukit.nn.kernels import blas, common

SHAPES = list(itertools.product((1, 2, 3, 5, 6, 33), (1, 2, 7, 16), (1, 3, 12, 48)))   # 5 | 6: loop | BLAS


@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_gemm_equals_numpy_on_every_shape_including_size_one_dimensions(dtype, atol):
    rng = np.random.default_rng(0)
    for R, K, N in SHAPES:
        x = rng.standard_normal((R, K)).astype(dtype)
        m = rng.standard_normal((K, N)).astype(dtype)
        out = np.full((R, N), np.nan, dtype)
        common.gemm(x, m, out)
        np.testing.assert_allclose(out, x @ m, atol=atol, rtol=0, err_msg=f"{(R, K, N)}")


def test_rows_with_a_stride_and_a_slice_of_rows_as_output():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 6))
    m = rng.standard_normal((6, 4))
    out = np.zeros((8, 4))
    blas.blas_gemm(x[::2], m, out[2:7])
    np.testing.assert_allclose(out[2:7], x[::2] @ m, atol=1e-12)
    assert not out[:2].any() and not out[7:].any()   # nothing written outside the slice


def test_torch_build_provides_mkl():
    assert blas.PROVIDER.startswith("MKL") and blas.PER_THREAD_LIMIT


def test_without_torch_the_kernels_use_scipy_openblas():
    # blas.py finds torch's library with importlib.util.find_spec; hide it there (grukit.nn itself
    # still imports torch) and the provider must fall back to scipy's OpenBLAS.
    code = textwrap.dedent("""
        import importlib.util
        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
        import numpy as np
        from grukit.nn.kernels import blas, common
        assert blas.PROVIDER == "OpenBLAS (scipy)" and not blas.PER_THREAD_LIMIT, blas.PROVIDER
        rng = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            x, m = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((7, 9)).astype(dtype)
            out = np.empty((5, 9), dtype)
            common.gemm(x, m, out)
            assert np.abs(out - x @ m).max() < 1e-4
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_accumulating_gemm_with_the_weight_as_stored(dtype, atol):
    """blas_gemm_nt_acc: out += x @ w.T with w (N, K) as a torch Linear stores it."""
    rng = np.random.default_rng(2)
    for R, K, N in SHAPES:
        x = rng.standard_normal((R, K)).astype(dtype)
        w = rng.standard_normal((N, K)).astype(dtype)
        out = rng.standard_normal((R, N)).astype(dtype)
        want = out + x @ w.T
        blas.blas_gemm_nt_acc(x, w, out)
        np.testing.assert_allclose(out, want, atol=atol, rtol=0, err_msg=f"{(R, K, N)}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pack_transposed_equals_the_transpose(dtype):
    """The compiled transposing copy (eight rows at a time, then the remainder rows)."""
    rng = np.random.default_rng(4)
    for shape in ((384, 128), (13, 5), (7, 3), (1, 9), (9, 1), (0, 4), (16, 0)):
        w = rng.standard_normal(shape).astype(dtype)
        packed = common.pack_transposed(w)
        assert packed.flags.c_contiguous and packed.dtype == dtype
        np.testing.assert_array_equal(packed, w.T)
    strided = rng.standard_normal((12, 10)).astype(dtype)[:, ::2]     # not contiguous: copied first
    np.testing.assert_array_equal(common.pack_transposed(strided), strided.T)
