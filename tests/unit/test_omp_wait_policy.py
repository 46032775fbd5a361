"""The inference package makes OpenMP wait passively (PyTorch's threads otherwise spin on
cores the pipeline shares: docs/PERFORMANCE.md) unless the user chose otherwise."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _policy_after_import(env_value):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    code = "import inference.classify, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_passive_by_default_before_any_engine_loads():
    assert _policy_after_import(None) == "PASSIVE"


def test_the_users_choice_wins():
    assert _policy_after_import("ACTIVE") == "ACTIVE"
