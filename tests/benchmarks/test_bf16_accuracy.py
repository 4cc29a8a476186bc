"""Smoke test of the bfloat16 accuracy harness (benchmarks/bf16_accuracy.py) on the airline series:
it trains both precisions and writes well-formed results, and the bfloat16 mode's forecast stays
close to float32's (in the full run the difference was 0.1% of the MAE; a broken mode is far off)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT.parent / "shared" / "data" / "timeseries" / "airline-passengers.csv"


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(not SERIES.is_file(), reason=f"needs {SERIES}")
def test_quick_run_trains_both_precisions_to_close_forecasts(tmp_path):
    command = [sys.executable, "-m", "benchmarks.bf16_accuracy", "--quick", "--tasks", "airline-gru",
               "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    record = json.loads((tmp_path / "bf16_accuracy_quick.json").read_text())
    runs = record["tasks"]["airline-gru"]["runs"]
    assert sorted(r["precision"] for r in runs) == ["bfloat16", "float32"]
    mae = {r["precision"]: r["metric"] for r in runs}
    assert 0 < mae["float32"] < 100
    assert mae["bfloat16"] != mae["float32"]            # the mode ran: other roundings, other weights
    assert abs(mae["bfloat16"] - mae["float32"]) < 0.05 * mae["float32"]
    assert "BF16 units" in (tmp_path / "bf16_accuracy_quick.md").read_text()
