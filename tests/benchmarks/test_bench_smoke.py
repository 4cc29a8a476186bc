"""Smoke test of the benchmark harness (make bench): it runs and writes well-formed results.

Nothing is timed against a threshold here; speed lives in benchmarks/ and its results files.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path):
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "S3", "--cells", "gru,mingru",
               "--no-keras", "--no-onnx", "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "S3" in completed.stderr  # progress goes to stderr

    result = json.loads((tmp_path / "latest.json").read_text())
    assert {"machine", "settings", "threads", "measurements", "comparisons", "flop_formula"} <= set(result)
    assert result["machine"]["cpu_model"] and result["machine"]["versions"]["torch"]
    assert result["threads"]["torch.get_num_threads"] == 2
    measured = {(m["cell"], m["impl"]) for m in result["measurements"]}
    assert measured == {("gru", "grukit"), ("gru", "torch"), ("mingru", "grukit")}
    for m in result["measurements"]:
        assert m["scenario"] == "S3" and m["mode"] == "training" and m["unit"] == "ms"
        assert m["median"] > 0 and m["first_call"] > 0 and m["gflops"] > 0
        assert len(m["times"]) == m["repeats"] >= 2 and all(t > 0 for t in m["times"])
        if m["impl"] == "grukit":
            assert m["path"]["path"] in ("fused", "reference", "mixed")
    (row,) = result["comparisons"]
    assert row["peer"] == "torch" and row["ratio"] > 0 and row["target"] == ">=8x"
    assert row["met"] == (row["ratio"] >= 8)

    report = (tmp_path / "latest.md").read_text()
    assert "## GRU" in report and "## Cells without a peer" in report
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files
