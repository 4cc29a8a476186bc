"""Shared by the accuracy harnesses on real data (japanese_vowels, polyphonic): where the data is,
and how a run's record is written (JSON and markdown, atomically, the table echoed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .report import write_atomic

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    """Progress on stderr, so that stdout carries only the final table."""
    print(message, file=sys.stderr, flush=True)


def write_record(out: Path, name: str, record: dict, markdown: str) -> None:
    """OUT/<name>.json and OUT/<name>.md, each written atomically; the markdown is printed."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{name}.json", json.dumps(record, indent=2))
    write_atomic(out / f"{name}.md", markdown)
    print(markdown)
