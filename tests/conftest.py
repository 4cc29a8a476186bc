import os
from pathlib import Path

import pytest
import torch

# Keras (a test-only oracle) runs on the torch backend; set before any test imports it.
os.environ.setdefault("KERAS_BACKEND", "torch")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the ../shared/data folder beside the project)")
    return SHARED_DATA
