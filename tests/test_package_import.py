"""What ``import grukit`` does to the process: the OpenMP wait policy (see grukit/__init__.py)."""

import os
import subprocess
import sys

PRINT_POLICY = "import os, sys; {first}import grukit; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy_after_import(first: str = "", env_policy: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = PRINT_POLICY.format(first=first)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_before_torch_sets_passive_waiting():
    assert _policy_after_import() == "PASSIVE"


def test_a_policy_the_user_chose_is_kept():
    assert _policy_after_import(env_policy="ACTIVE") == "ACTIVE"


def test_torch_already_loaded_leaves_the_environment_alone():
    # libgomp has read the policy already; changing the variable then would only mislead.
    assert _policy_after_import(first="import torch; ") == "None"
