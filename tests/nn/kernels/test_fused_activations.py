"""Error bounds of the vectorizable exp / sigmoid / tanh the kernels use instead of libm, and
the single rounding of ``fma``."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from fractions import Fraction

from grukit.nn.kernels.common import JIT, fma, sigmoid, tanh, vexp


@njit(**JIT)
def _evaluate(x, e, s, t):
    for i in range(x.shape[0]):
        e[i] = vexp(x[i])
        s[i] = sigmoid(x[i])
        t[i] = tanh(x[i])


def _grid(dtype):
    dense = np.linspace(-120.0, 120.0, 400_001)
    small = np.concatenate([np.geomspace(1e-30, 1e-2, 2_000), -np.geomspace(1e-30, 1e-2, 2_000)])
    return np.concatenate([dense, small, [0.0, -0.0]]).astype(dtype)


@pytest.mark.parametrize("dtype,exp_limit", [(np.float32, 87.0), (np.float64, 708.0)])
def test_error_bounds(dtype, exp_limit):
    x = _grid(dtype)
    e, s, t = (np.empty_like(x) for _ in range(3))
    _evaluate(x, e, s, t)
    xd = x.astype(np.float64)
    eps = np.finfo(dtype).eps
    with np.errstate(over="ignore"):
        want_s = 1.0 / (1.0 + np.exp(-xd))
    inside = np.abs(xd) <= min(exp_limit, 120.0)
    rel = np.abs(e[inside] - np.exp(xd[inside])) / np.exp(xd[inside])
    assert rel.max() <= 2 * eps                                  # exp: 2 ulp
    assert np.abs(s - want_s).max() <= 4 * eps                   # sigmoid: 4 eps absolute
    assert np.abs(t - np.tanh(xd)).max() <= 4 * eps              # tanh: 4 eps absolute
    assert ((s >= 0) & (s <= 1)).all() and ((t >= -1) & (t <= 1)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30], dtype)
    e, s, t = (np.empty_like(x) for _ in range(3))
    _evaluate(x, e, s, t)
    assert np.isnan(e[0]) and np.isnan(s[0]) and np.isnan(t[0])
    # exp saturates instead of overflowing: sigmoid(-inf) is 1e-38 / 1e-308, not 0.
    np.testing.assert_allclose(s[1:], np.array([1, 0, 1, 0], dtype), rtol=0, atol=1e-37)
    np.testing.assert_array_equal(t[1:], np.array([1, -1, 1, -1], dtype))
    assert e[2] < 1e-37 and e[4] < 1e-37 and np.isfinite(e[1])


@njit(**JIT)
def _fma_each(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = fma(a[i], b[i], c[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fma_rounds_once(dtype):
    """fma(a, b, c) is a * b + c computed exactly, then rounded once: (1 + e)(1 - e) - 1 is
    -e^2, which a product rounded before the addition loses entirely."""
    e = dtype(2.0 ** (-13 if dtype == np.float32 else -30))
    rng = np.random.default_rng(0)
    a = np.concatenate([[1 + e], rng.standard_normal(1000)]).astype(dtype)
    b = np.concatenate([[1 - e], rng.standard_normal(1000)]).astype(dtype)
    c = np.concatenate([[-1.0], rng.standard_normal(1000)]).astype(dtype)
    out = np.empty_like(a)
    _fma_each(a, b, c, out)
    assert out[0] == -e * e and a[0] * b[0] + c[0] == 0
    exact = [dtype(float(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))))
             for x, y, z in zip(a, b, c)]
    np.testing.assert_array_equal(out, np.array(exact, dtype))
