"""Fused kernels against the pure-torch oracle: outputs, final states and every gradient."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grukit.nn.kernels import common
from grukit.nn.kernels.function import fused_run_direction
from grukit.nn.reference import run_direction
from kernel_cases import MODES, BIASED, assert_close_lists, make_case, outputs_and_grads

# (T, B, H): a general shape and the degenerate ones.
SHAPES = [(5, 3, 4), (4, 1, 3), (1, 3, 4), (4, 3, 1)]
VARIANTS = [(m, "identity") for m in MODES] + [("MINGRU", "g")]


def check(mode, case, reverse, candidate, atol):
    want_vals, want_grads = outputs_and_grads(run_direction, mode, case, reverse, candidate)
    got_vals, got_grads = outputs_and_grads(fused_run_direction, mode, case, reverse, candidate)
    assert_close_lists(got_vals, want_vals, atol, "outputs/states")
    assert_close_lists(got_grads, want_grads, atol, "grads (gx, states, weight_hh, bias_hh)")


@pytest.mark.parametrize("mode,candidate", VARIANTS)
def test_float64_parity_sweep(mode, candidate):
    for (T, B, H), reverse, ragged in itertools.product(SHAPES, (False, True), (False, True)):
        case = make_case(mode, T, B, H, ragged=ragged, seed=T * 100 + B * 10 + H)
        check(mode, case, reverse, candidate, atol=1e-9)


@pytest.mark.parametrize("mode", BIASED)
def test_without_bias_hh(mode):
    for reverse in (False, True):
        check(mode, make_case(mode, 4, 2, 3, bias=False, ragged=True), reverse, "identity", 1e-9)


@pytest.mark.parametrize("mode,candidate", VARIANTS)
def test_float32_parity(mode, candidate):
    for reverse, ragged in itertools.product((False, True), (False, True)):
        case = make_case(mode, 6, 3, 8, dtype=torch.float32, ragged=ragged, seed=7)
        check(mode, case, reverse, candidate, atol=1e-5)


@pytest.mark.parametrize("mode,candidate", VARIANTS)
def test_parallel_batch_split(mode, candidate, monkeypatch):
    """Force the multi-threaded path (one block of rows per thread) on a small batch."""
    monkeypatch.setattr(common, "MIN_PARALLEL_WORK", 0)
    for reverse in (False, True):
        check(mode, make_case(mode, 5, 5, 4, ragged=True, seed=3), reverse, candidate, 1e-9)


@pytest.mark.parametrize("mode,candidate", VARIANTS)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_gemm_path_larger_blocks(mode, candidate, dtype, atol, monkeypatch):
    """Blocks of many rows (the per-step BLAS GEMMs), ragged: rows past their end ride
    along in the GEMMs and must keep their state; both the serial and the split batch."""
    for min_work in (common.MIN_PARALLEL_WORK, 0):
        monkeypatch.setattr(common, "MIN_PARALLEL_WORK", min_work)
        for reverse in (False, True):
            case = make_case(mode, 7, 13, 24, dtype=dtype, ragged=True, seed=11)
            check(mode, case, reverse, candidate, atol)


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(VARIANTS), T=st.integers(1, 6), B=st.integers(1, 4),
       H=st.integers(1, 6), reverse=st.booleans(), ragged=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_property_random_shapes(mode, T, B, H, reverse, ragged, seed):
    mode, candidate = mode
    check(mode, make_case(mode, T, B, H, ragged=ragged, seed=seed), reverse, candidate, 1e-9)


def test_gradients_only_for_leaves_that_need_them():
    gx, h0, weights, lengths, _ = make_case("GRU", 4, 2, 3)
    w = weights.weight_hh.detach()
    out, h_n = fused_run_direction("GRU", gx, h0.detach(), type(weights)(w, None))
    (grad_gx,) = torch.autograd.grad(out.sum() + h_n.sum(), [gx])
    ref_out, ref_h = run_direction("GRU", gx, h0.detach(), type(weights)(w, None))
    (want,) = torch.autograd.grad(ref_out.sum() + ref_h.sum(), [gx])
    torch.testing.assert_close(grad_gx, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode,used", [(mode, used) for mode in MODES for used in ("sequence", "last state")]
                         + [("LSTM", "cell state")])
def test_a_loss_on_one_output_only(mode, used):
    """The outputs the loss does not read reach backward as None (kept zeros replace them)."""
    case = make_case(mode, 7, 3, 4, ragged=True)
    grads = []
    for run in (fused_run_direction, run_direction):
        gx, state0, weights, lengths, leaves = case
        out, state = run(mode, gx, state0, weights, lengths=lengths, reverse=False)
        states = state if isinstance(state, tuple) else (state,)
        picked = {"sequence": out, "last state": states[0], "cell state": states[-1]}[used]
        grads.append(torch.autograd.grad(picked.sin().sum(), leaves, allow_unused=True))
        grads[-1] = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads[-1], leaves)]
    assert_close_lists(grads[0], grads[1], 1e-9, f"{mode} {used}")
