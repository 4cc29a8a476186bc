"""``import grukit`` leaves the process's OpenMP settings alone (see grukit/__init__.py)."""

import os
import subprocess
import sys


def test_import_does_not_set_the_openmp_wait_policy():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, grukit.nn; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
