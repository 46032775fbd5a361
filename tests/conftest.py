"""Shared fixtures: a CIFAR archive in the official layout and a real local stack."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-python-sample.tar.gz"
STACK_ENV_KEYS = ("KAFKA_BOOTSTRAP_SERVERS", "MONGO_URI", "INFERENCE_URL")


def make_cifar_archive(path: Path, per_batch: int = 20) -> Path:
    """A tiny archive in the official CIFAR-10 'python version' layout (random pixels)."""
    rng = np.random.default_rng(1)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]
    members = {"batches.meta": {b"label_names": names}}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        members[name] = {b"batch_label": name.encode(),
                         b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
                         b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory) -> Path:
    """The real CIFAR-10 sample when the checkout has ../shared/data, else a generated one."""
    if SHARED_SAMPLE.is_file():
        return SHARED_SAMPLE
    return make_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz")


def read_env_file(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory, cifar_archive):
    """The real embedded stack (Kafka-protocol broker, MongoDB wire server, Gunicorn,
    both consumers) on free ports, started once for the session and stopped after."""
    stack_dir = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if k not in STACK_ENV_KEYS}
    env.update(STACK_DIR=str(stack_dir), STACK_KAFKA_PORT="0", STACK_MONGO_PORT="0",
               STACK_INFERENCE_PORT="0", MODEL_WEIGHTS="random", GUNICORN_WORKERS="1",
               DATASET_SOURCE=str(cifar_archive), BATCH_WAIT_MS="20")
    up = subprocess.run([sys.executable, "-m", "stack", "up", "--timeout", "300"], cwd=ROOT,
                        env=env, capture_output=True, text=True)
    if up.returncode != 0:
        logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((stack_dir / "logs").glob("*.log")))
        pytest.fail(f"stack up failed:\n{up.stdout}\n{up.stderr}\n{logs}")
    env.update(read_env_file(stack_dir / "stack.env"))
    yield {"dir": stack_dir, "env": env}
    pids = stack_processes(stack_dir)
    down = subprocess.run([sys.executable, "-m", "stack", "down"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    # `stack down` must leave no process behind (gunicorn workers included).
    left = [pid for pid in pids if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"]
    assert not left, f"processes left after 'stack down': {left}"
    assert not list((stack_dir / "pids").glob("*.pid"))


def stack_processes(stack_dir: Path) -> list[int]:
    """The supervisor, every component and their children (gunicorn workers)."""
    pids = []
    for pid_file in [stack_dir / "supervisor.pid", *(stack_dir / "pids").glob("*.pid")]:
        try:
            pids.append(int(pid_file.read_text()))
        except (OSError, ValueError):
            continue
    from stack.supervisor import child_pids

    children = [c for pid in pids for c in child_pids(pid)]
    return pids + children
