"""The threads that run the kernels' row blocks: torch's OpenMP team, or the Python pool."""

import multiprocessing
import os
import threading

import pytest
import torch

import grukit.nn as gnn
from grukit.nn.kernels import common, team

HAS_TORCH_GOMP = os.path.exists(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1"))


@pytest.fixture(params=["openmp", "pool"])
def provider(request, monkeypatch):
    if request.param == "openmp":
        if not HAS_TORCH_GOMP:
            pytest.skip("this torch build carries no libgomp.so.1")
        assert team.provider() == "torch's OpenMP team"
    else:
        monkeypatch.setattr(team, "_team", lambda: None)
        assert team.provider() == "Python thread pool"
    return request.param


def test_every_block_runs_once_on_its_own_thread_the_first_on_the_caller(provider):
    ran, lock = [], threading.Lock()

    def block(index):
        with lock:
            ran.append((index, threading.get_native_id()))

    team.run_blocks(block, 2)
    assert sorted(index for index, _ in ran) == [0, 1]
    threads = dict(ran)
    assert threads[0] == threading.get_native_id()
    assert threads[1] != threads[0]


def test_more_blocks_than_threads_all_run(provider):
    ran = []
    team.run_blocks(ran.append, 5)
    assert sorted(ran) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("failing", [0, 1])
def test_an_exception_in_any_block_reaches_the_caller_after_all_blocks_ran(provider, failing):
    ran = []

    def block(index):
        ran.append(index)
        if index == failing:
            raise ValueError(f"block {index} failed")

    with pytest.raises(ValueError, match=f"block {failing} failed"):
        team.run_blocks(block, 2)
    assert sorted(ran) == [0, 1]


@pytest.mark.parametrize("cls", [gnn.GRU, gnn.LSTM, gnn.RNN])
def test_kernels_give_identical_numbers_on_either_provider(cls, monkeypatch):
    """A row's numbers do not depend on which thread computed it."""
    torch.manual_seed(0)
    layer = cls(12, 24)
    x = torch.randn(30, 48, 12, requires_grad=True)
    assert common.chunk_bounds(48, 30 * 48 * 24 * 24 * 4) is not None or common.get_threads() == 1

    def run():
        y, _ = layer(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        return y.detach(), grads

    y_team, grads_team = run()
    monkeypatch.setattr(team, "_team", lambda: None)
    y_pool, grads_pool = run()
    assert torch.equal(y_team, y_pool)
    for a, b in zip(grads_team, grads_pool):
        assert torch.equal(a, b)


def _child(queue):
    ran = []
    team.run_blocks(ran.append, 2)
    queue.put((team.provider(), sorted(ran)))


@pytest.mark.skipif(not HAS_TORCH_GOMP, reason="this torch build carries no libgomp.so.1")
def test_a_forked_child_uses_the_pool_and_does_not_hang():
    """libgomp's team does not survive a fork (torch's own 2-thread matmul hangs in such a child):
    a child forked after the team ran must run its blocks on the pool."""
    team.run_blocks(lambda index: None, 2)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert queue.get(timeout=5) == ("Python thread pool", [0, 1])


def test_layers_called_from_several_python_threads_at_once_give_the_single_thread_numbers():
    """Each calling thread gets its own OpenMP team; the GIL is never held across a team's barrier."""
    from concurrent.futures import ThreadPoolExecutor
    torch.manual_seed(0)
    layer = gnn.GRU(12, 24)
    inputs = [torch.randn(30, 48, 12, requires_grad=True) for _ in range(4)]

    def run(x):
        y, _ = layer(x)
        return y.detach(), torch.autograd.grad(y.square().sum(), x)[0]

    expected = [run(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, inputs * 3))
    for (y, g), (y_expected, g_expected) in zip(results, expected * 3):
        assert torch.equal(y, y_expected) and torch.equal(g, g_expected)
