"""Fit a GRU and an LSTM from grukit.nn to a real monthly series and compare them with a baseline.

The series (airline passengers 1949-1960 by default) is turned into month-to-month log changes,
the models read the last ``--window`` changes and predict the next one, and the forecasts are
scored on the final ``--test-months`` months against the seasonal-naive baseline (same month
last year). Run ``python examples/demo_fit_series.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

import grukit.nn as gnn

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "timeseries" / "airline-passengers.csv"


def read_series(path: Path) -> np.ndarray:
    """The last column of a CSV with a header row and a date in the first column."""
    if not path.is_file():
        sys.exit(f"error: no series at {path}. Pass --data PATH to a CSV with a date column and a value "
                 "column (the project's real data lives in ../shared/data beside the repository).")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    return np.array([float(row[-1]) for row in rows if row], dtype=np.float64)


class Forecaster(torch.nn.Module):
    def __init__(self, cell: str, hidden: int):
        super().__init__()
        layer = {"gru": gnn.GRU, "lstm": gnn.LSTM}[cell]
        self.recurrent = layer(1, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        output, _ = self.recurrent(x)
        return self.head(output[:, -1]).squeeze(-1)


def windows(changes: np.ndarray, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([changes[i:i + window] for i in range(len(changes) - window)])
    return torch.tensor(x[..., None], dtype=torch.float32), torch.tensor(changes[window:], dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with a date and a value column")
    parser.add_argument("--window", type=int, default=12, help="months of history per sample (default 12)")
    parser.add_argument("--test-months", type=int, default=24, help="final months held out (default 24)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units of each model (default 32)")
    parser.add_argument("--epochs", type=int, default=400, help="full-batch Adam steps (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    series = read_series(args.data)
    log_series = np.log(series)
    changes = np.diff(log_series)                      # change[i] = log y[i+1] - log y[i]
    scale = changes[: -args.test_months].std()
    x, y = windows(changes / scale, args.window)       # sample j predicts change[j + window]
    split = len(y) - args.test_months
    targets = series[-args.test_months:]
    previous = series[-args.test_months - 1:-1]
    print(f"{args.data.name}: {len(series)} months; training on {split} windows, "
          f"testing one-step forecasts of the last {args.test_months} months")

    results = {"seasonal naive": np.abs(series[-args.test_months - 12:-12] - targets).mean()}
    for cell in ("gru", "lstm"):
        torch.manual_seed(args.seed)
        model = Forecaster(cell, args.hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        start = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[:split]), y[:split])
            loss.backward()
            optimizer.step()
            if epoch == 1 or epoch % (args.epochs // 4) == 0:
                print(f"  {cell.upper():4s} epoch {epoch:4d}  train MSE {loss.item():.4f}")
        with torch.no_grad():
            predicted_change = model(x[split:]).numpy() * scale
        forecast = previous * np.exp(predicted_change)
        results[cell.upper()] = np.abs(forecast - targets).mean()
        parameters = sum(p.numel() for p in model.recurrent.parameters())
        print(f"  {cell.upper():4s} {parameters} recurrent parameters, {time.perf_counter() - start:.1f} s")

    print(f"\nMean absolute error on the last {args.test_months} months (passengers, lower is better):")
    for name, error in results.items():
        print(f"  {name:15s} {error:8.2f}")


if __name__ == "__main__":
    main()
