"""The benchmark harness's order of calls and its comparisons, on synthetic inputs (no timing)."""

from collections import Counter

import numpy as np
import pytest

from benchmarks.report import comparisons, markdown
from benchmarks import timing
from benchmarks.timing import Settings, balanced_orders, loop_length, measure_group


@pytest.mark.parametrize("n", range(1, 8))
def test_balanced_orders_put_every_implementation_after_every_other_equally_often(n):
    orders = balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    adjacent = Counter((order[i], order[i + 1]) for order in orders for i in range(n - 1))
    assert len(adjacent) == n * (n - 1) and len(set(adjacent.values())) <= 1


def test_measure_group_runs_the_balanced_orders_round_by_round():
    calls = []
    functions = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    records = measure_group(functions, Settings(repeats=8, warmup=1, exact=True, loop_s=0))
    assert calls[:8] == list("aabbccdd")         # warm-up and the call that sizes the loop, in the given order
    rounds = [calls[8 + 4 * r: 12 + 4 * r] for r in range(8)]
    expected = ["".join("abcd"[i] for i in order) for order in balanced_orders(4)] * 2
    assert ["".join(r) for r in rounds] == expected
    assert all(record["repeats"] == 8 and record["calls"] == 10 and "after_switch" not in record
               for record in records.values())


def test_a_repetition_is_a_lead_call_then_a_loop_whose_mean_is_its_time(monkeypatch):
    """A fake clock: a call takes 1 ms (a) or 5 ms (b), and 3 ms more right after the other's call.
    Each repetition's lead call carries that switch; the loop after it times the calls alone."""
    now, calls = [0.0], []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def call(name, seconds):
        def run():
            now[0] += seconds + (0.003 if calls and calls[-1] != name else 0.0)
            calls.append(name)
        return run

    records = measure_group({"a": call("a", 0.001), "b": call("b", 0.005)},
                            Settings(repeats=4, warmup=1, exact=True, loop_s=0.02))
    assert [records[n]["calls_per_repeat"] for n in "ab"] == [20, 4]
    rounds = "".join(calls[4:])                  # after "aa" and "bb"
    assert rounds == ("a" * 21 + "b" * 5) + ("b" * 5 + "a" * 21) + ("a" * 21 + "b" * 5) + ("b" * 5 + "a" * 21)
    assert records["a"]["median"] == pytest.approx(1.0) and records["b"]["median"] == pytest.approx(5.0)
    # a's lead in the third round followed a's own loop: only the other three followed b
    assert records["a"]["after_switch"]["times"] == pytest.approx([4.0] * 3)
    assert records["b"]["after_switch"]["times"] == pytest.approx([8.0] * 2)
    assert records["a"]["calls"] == 2 + 4 * 21 and len(calls) == 2 + 4 * 21 + 2 + 4 * 5


def test_a_call_as_long_as_the_loop_is_timed_alone():
    assert loop_length(0.03, 0.02) == 0 and loop_length(0.02, 0.02) == 0 and loop_length(0.001, 0) == 0
    assert loop_length(0.015, 0.02) == 2 and loop_length(0.0049, 0.02) == 4 and loop_length(1e-7, 0.02) == 200


def _result(**parts) -> dict:
    """A benchmark result for report.markdown: a made-up machine and threads, no rows unless given."""
    return {"machine": {"date": "d", "cpu_model": "c", "usable_cpus": 2, "logical_cpus": 2, "versions": {}},
            "threads": {"pinned": {"threads": 2, "cpus": [0, 1], "environment": {}},
                        "torch.get_num_threads": 2, "torch.get_num_interop_threads": 2,
                        "numba.get_num_threads": 2, "numba.threading_layer": "omp"},
            "settings": {"warmup": 1}, "comparisons": [], "measurements": [], **parts}


def _measurement(impl, mode, median, cell="gru"):
    return {"impl": impl, "cell": cell, "scenario": "S1", "mode": mode, "median": median, "unit": "ms"}


def test_the_streamers_chunk_call_is_compared_with_the_peers_inference_against_its_targets():
    measurements = [_measurement("grukit", "inference", 1.5), _measurement("grukit", "chunk", 0.5),
                    _measurement("torch", "inference", 6.0), _measurement("onnxruntime", "inference", 1.2)]
    rows = comparisons(measurements, [], None)
    chunk = {r["peer"]: r for r in rows if r["mode"] == "chunk"}
    assert set(chunk) == {"torch", "onnxruntime"}
    assert chunk["torch"]["ratio"] == pytest.approx(12.0) and chunk["torch"]["target"] == ">=10x"
    assert chunk["torch"]["met"] is True
    assert chunk["onnxruntime"]["ratio"] == pytest.approx(2.4) and chunk["onnxruntime"]["met"] is True
    layer = {r["peer"]: r for r in rows if r["mode"] == "inference"}
    assert layer["torch"]["ratio"] == pytest.approx(4.0) and layer["torch"]["met"] is False
    result = _result(comparisons=rows, measurements=measurements)
    assert "| inference via `streamer.run` | 0.500 ms |" in markdown(result)


def test_the_bfloat16_training_step_is_compared_with_the_peers_float32_step_against_2x():
    def training(impl, mode, median, cell="gru"):
        return {**_measurement(impl, mode, median, cell), "scenario": "S4"}
    measurements = [training("grukit", "training", 600.0), training("grukit", "training-bf16", 400.0),
                    training("torch", "training", 900.0), training("grukit", "training-bf16", 500.0, "lstm"),
                    training("torch", "training", 800.0, "lstm")]
    rows = {(r["cell"], r["mode"]): r for r in comparisons(measurements, [], None)}
    bf16 = rows[("gru", "training-bf16")]
    assert bf16["peer"] == "torch" and bf16["ratio"] == pytest.approx(2.25)
    assert bf16["target"] == ">=2x" and bf16["met"] is True
    assert rows[("gru", "training")]["target"] == ">=1.15x"
    assert rows[("lstm", "training-bf16")]["target"] is None and rows[("lstm", "training-bf16")]["met"] is None


def test_the_weight_read_floor_is_the_weights_bytes_over_the_measured_read_rate():
    from benchmarks.machine import weight_read_floor
    floor = weight_read_floor(Settings(repeats=3, warmup=1, exact=True), input_size=8, hidden_size=16, gates=3,
                              repeat=50)
    assert floor["bytes"] == (8 + 16) * 3 * 16 * 4
    rate = floor["gb_per_s"] * 1e9
    assert rate > 0
    assert floor["frame_us"] == pytest.approx(floor["bytes"] / rate * 1e6)
    assert floor["recurrent_us"] == pytest.approx(16 * 3 * 16 * 4 / rate * 1e6)
    result = _result(weight_read_floor=floor)
    assert f"{floor['frame_us']:.2f} us per streamed frame" in markdown(result)


def test_the_sentiment_report_warns_about_other_load_only_when_there_was_some():
    from benchmarks.sentiment import NOTICEABLE_LOAD, _load_sentence
    assert _load_sentence(0.0) == "Other processes used 0% of these CPUs over the run (per row below)."
    assert "inflated and noisy" not in _load_sentence(NOTICEABLE_LOAD / 2)
    assert "used 20% of these CPUs" in _load_sentence(0.2) and "inflated and noisy" in _load_sentence(0.2)


def test_the_training_flops_count_the_products_the_step_computes():
    """Literal count for the GRU at S4 (the input takes no gradient): forward x @ W_ih^T and
    h @ W_hh^T, backward grad W_ih = dG^T x, grad h = dG @ W_hh, grad W_hh = dG^T h."""
    from benchmarks.scenarios import SCENARIOS, training_flops
    T, B, I, H = 100, 128, 512, 512
    rows = T * B
    forward = rows * 3 * H * I + rows * 3 * H * H
    backward = rows * 3 * H * I + rows * 3 * H * H + rows * 3 * H * H
    assert training_flops("gru", SCENARIOS["S4"]) == 2 * (forward + backward)
    assert training_flops("mingru", SCENARIOS["S4"]) == 2 * (2 * rows * 2 * H * I)   # no recurrent matrix


def test_the_matmul_peak_is_the_faster_of_torchs_gemms():
    import torch

    from benchmarks.machine import matmul_peak
    peak = matmul_peak(Settings(repeats=3, warmup=1, exact=True), sizes=(64, 128))
    engines = peak["engine_gflops"]
    assert "mkl" in engines and ("onednn" in engines) == torch.backends.mkldnn.is_available()
    assert peak["gflops"] == max(engines.values())
    # a ceiling: each size's fastest repetition, the medians' rate kept beside it
    for n, record in peak["by_size"].items():
        assert record["gflops"] == pytest.approx(2 * int(n) ** 3 / (record["min"] * 1e-3) / 1e9)
        assert record["min"] == pytest.approx(min(record["times"]), abs=1e-4)   # times are kept to 4 decimals
        assert record["median_gflops"] <= record["gflops"]
    assert peak["median_gflops"] <= peak["gflops"]
    result = _result(matmul_peak=peak, flop_formula="F")
    text = markdown(result)
    assert f"torch.matmul (MKL) {engines['mkl']:.1f}" in text
    assert f"{peak['median_gflops']:.1f} from the medians" in text


def test_the_lead_calls_after_a_switch_get_a_table_of_their_own():
    def timed(impl, median, lead):
        return {**_measurement(impl, "training", median), "scenario": "S3", "after_switch": {"median": lead}}
    measurements = [timed("grukit", 1.7, 2.5), timed("torch", 7.5, 7.6),
                    {**_measurement("keras-jax", "training", 3.4), "scenario": "S3"}]   # its own process
    rows = {r["peer"]: r for r in comparisons(measurements, [], None)}
    assert rows["torch"]["ratio"] == pytest.approx(7.5 / 1.7)
    assert rows["torch"]["after_switch"]["ratio"] == pytest.approx(7.6 / 2.5)
    assert "after_switch" not in rows["keras-jax"]
    result = _result(settings={"warmup": 1, "loop_s": 0.02}, comparisons=list(rows.values()),
                     measurements=measurements)
    text = markdown(result)
    assert "consecutive calls for about 20 ms" in text
    table = text.split("## Calls right after another implementation's")[1]
    assert "| 2.500 ms | torch.nn | 7.600 ms | 3.04x |" in table and "Keras" not in table


def test_the_speed_ups_spread_over_the_rounds_of_one_group():
    """Each comparison of two implementations timed in the same rounds carries the quartiles of its
    per-round ratios (numpy's quantiles as the oracle); the Keras/JAX peer, timed in its own process,
    carries none, and the report prints the range beside the median's ratio."""
    rng = np.random.default_rng(0)
    ours_times = list(rng.uniform(1.5, 2.5, 30))
    torch_times = list(rng.uniform(6.0, 9.0, 30))

    def timed(impl, times, group):
        record = {**_measurement(impl, "training", float(np.median(times))), "scenario": "S3", "times": times}
        return {**record, "group": group} if group else record
    measurements = [timed("grukit", ours_times, "S3/gru/training"), timed("torch", torch_times, "S3/gru/training"),
                    timed("keras-jax", list(rng.uniform(2.0, 4.0, 30)), None)]
    rows = {r["peer"]: r for r in comparisons(measurements, [], None)}
    q25, q75 = np.quantile(np.array(torch_times) / np.array(ours_times), [0.25, 0.75])
    assert rows["torch"]["paired"]["q25"] == pytest.approx(q25)
    assert rows["torch"]["paired"]["q75"] == pytest.approx(q75)
    assert rows["torch"]["paired"]["rounds"] == 30
    assert "paired" not in rows["keras-jax"]
    # rounds of unequal counts cannot be paired
    unequal = [timed("grukit", ours_times[:10], "g"), timed("torch", torch_times, "g")]
    assert "paired" not in comparisons(unequal, [], None)[0]
    text = markdown(_result(comparisons=list(rows.values()), measurements=measurements))
    assert f"{rows['torch']['ratio']:.2f}x ({q25:.2f}-{q75:.2f})" in text
    assert f"{rows['keras-jax']['ratio']:.2f}x |" in text
