"""Two ``make demo`` runs on one stack whose data persists: the first demo starts the stack and
stops it (``down``: the store's data kept), the second starts it again on that data.  The
store then holds both runs' images, and the second run's summary counts exactly its own:
``stored``, ``lost`` and ``duplicate_documents`` never include the first run's images.

Everything is real (the demo as ``make demo`` runs it, the embedded broker, nx-27017 on its
SQLite file, Gunicorn, both consumers); the store is read at the end with pymongo.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pymongo import MongoClient

from stack.control import LocalStack, read_env, supervisor_pid
from tests.conftest import STACK_TEST_ENV
from tests.support import ROOT

pytestmark = pytest.mark.integration
COUNT = 60
DEMO_GUARD_S = 900  # a hang guard (the stack starts twice on a busy host), not a time bound


def test_a_second_demo_on_kept_data_counts_only_its_own_images(tmp_path, cifar_archive):
    stack = LocalStack(tmp_path / "stack", {**STACK_TEST_ENV, "DATASET_SOURCE": str(cifar_archive),
                                            "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0"})

    def demo(results, *extra):
        done = subprocess.run([sys.executable, "-m", "experiments.demo", "--count", str(COUNT), "--rate", "30",
                               "--results", str(results), *extra], cwd=ROOT, env=stack.env, capture_output=True,
                              text=True, timeout=DEMO_GUARD_S)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{stack.logs()}"
        return json.loads((results / "latest" / "summary.json").read_text())

    try:
        first = demo(tmp_path / "r1")  # starts the stack and stops it again: `make demo` on a stack that was down
        assert supervisor_pid(stack.dir) is None
        assert (stack.dir / "data" / "mongo.db").stat().st_size > 0  # kept by `down`

        second = demo(tmp_path / "r2", "--keep-up")  # the same stack directory, its data as the first left it

        for summary in (first, second):
            assert (summary["sent"], summary["results"], summary["stored"], summary["stored_with_prediction"],
                    summary["lost"], summary["duplicate_documents"]) == (COUNT, COUNT, COUNT, COUNT, 0, 0), summary
        producers = [json.loads(p.read_text())["producer_id"]
                     for p in sorted((tmp_path / "r1").glob("demo-*/producers/*/producer.json"))
                     + sorted((tmp_path / "r2").glob("demo-*/producers/*/producer.json"))]
        assert len(set(producers)) == 2, producers
        uri = read_env(stack.dir / "stack.env")["MONGO_URI"]
        with MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
            images = client.iot.images
            per_run = [images.count_documents({"producer_id": p, "prediction": {"$exists": True}}) for p in producers]
        assert per_run == [COUNT, COUNT]  # the store holds both runs; the second summary counted its own
    finally:
        stack.stop()
