"""A full disk under the store, end to end: the local stack with STORE=postgres, its data
directory a tmpfs of its own (mounted here; root only, skipped otherwise), filled until
256 KB are left once the stack is up.  A producer sends 200 images through the real broker,
Gunicorn and both consumers.

Asserted: the producer gets every result (inference does not depend on the store); the DB
consumer's log says the disk is full and where, and the store holds fewer images than were
sent (intake stopped, the rest waiting in Kafka, uncommitted); once the filler is deleted,
every image is stored exactly once with its prediction (the run closed as ``make demo``
closes it: lost 0, duplicate documents 0).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from analysis.summary import close_run
from common.settings import PostgresSettings
from common.store import open_reader
from stack.control import LocalStack
from tests import pg
from tests.binaries import mount_tmpfs
from tests.conftest import STACK_TEST_ENV
from tests.integration.test_pipeline_postgres import run_producer
from tests.support import HANG_GUARD_S

pytestmark = pytest.mark.integration
COUNT = 200
LEFT_BYTES = 256 * 1024


@pytest.fixture
def stack_on_small_disk(cifar_archive):
    pg.programs()
    d = pg.reachable_dir("iot-pg-fullstack-")
    data = d / "stack" / "data"
    data.mkdir(parents=True)
    try:
        mount_tmpfs(data, "size=96m,mode=0755")
    except BaseException:  # skipped or failed: the directory goes all the same
        pg.remove(d)
        raise
    stack = LocalStack(d / "stack", {**STACK_TEST_ENV, "DATASET_SOURCE": str(cifar_archive), "STORE": "postgres",
                                     "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0"}, timeout_s=300)
    try:
        stack.start()
        yield stack, data
    finally:
        stack.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
        pg.remove(d)


def test_a_full_store_disk_stops_intake_and_loses_nothing_acknowledged(stack_on_small_disk, tmp_path):
    stack, data = stack_on_small_disk
    dsn = stack.env["POSTGRES_DSN"]
    st = os.statvfs(data)
    filler = data / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - LEFT_BYTES))

    # Images of random pixels (DATASET=synthetic): ~3 KB each that PostgreSQL must store.
    proc = run_producer({**stack.env, "DATASET": "synthetic"}, tmp_path, "--count", str(COUNT), "--rate", "50",
                        "--producer-id", "full-disk")
    assert proc.returncode == 0, proc.stderr[-3000:]  # every result came back

    log = stack.dir / "logs" / "db-consumer.log"
    deadline = time.monotonic() + HANG_GUARD_S
    while "disk full at postgresql://" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the DB consumer never reported a full disk"
        time.sleep(0.5)
    line = next(x for x in log.read_text(errors="replace").splitlines() if "disk full at" in x)
    assert "ERROR" in line and "intake stopped" in line and "No space left on device" in line, line
    held = len(pg.rows(dsn, "producer_id = %s", ("full-disk",)))
    assert held < COUNT, "every image was stored: the disk was not full"

    filler.unlink()
    store = open_reader(store="postgres", postgres=PostgresSettings(postgres_dsn=dsn))
    try:
        summary = close_run(tmp_path, store, timeout_s=HANG_GUARD_S)
    finally:
        store.close()
    assert (summary["sent"], summary["results"], summary["stored_with_prediction"]) == (COUNT, COUNT, COUNT)
    assert summary["lost"] == 0 and summary["duplicate_documents"] == 0, summary
    with pg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT image_id), count(prediction) FROM iot_image_data "
                            "WHERE producer_id = 'full-disk'").fetchone() == (COUNT, COUNT, COUNT)
    assert not [x for x in log.read_text(errors="replace").splitlines() if "dead-letter" in x]
