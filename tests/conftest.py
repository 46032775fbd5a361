"""Shared fixtures: a CIFAR archive in the official layout and a real local stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stack.control import LocalStack
from stack.supervisor import pid_alive
from tests.support import make_cifar_archive

ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-python-sample.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory):
    """The tests' dataset split cache (common/dataset.py) in a temporary directory, not the
    user's ~/.cache; producers started by the tests inherit it."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory) -> Path:
    """The real CIFAR-10 sample when the checkout has ../shared/data, else a generated one."""
    if SHARED_SAMPLE.is_file():
        return SHARED_SAMPLE
    return make_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz")


STACK_TEST_ENV = {"MODEL_WEIGHTS": "random", "GUNICORN_WORKERS": "1", "PREDICT_BATCH_WAIT_MS": "20",
                  # The warm-up of every batch size keeps a worker's memory flat (the soak);
                  # these tests judge no memory, and each service start would take seconds more.
                  "MODEL_WARMUP_S": "0",
                  # Prometheus, when installed, scrapes every second (tests/integration/test_metrics_stack.py)
                  "STACK_SCRAPE_INTERVAL": "1s"}


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory, cifar_archive):
    """The real embedded stack (Kafka-protocol broker, MongoDB wire server, Gunicorn,
    both consumers, Prometheus when installed) on free ports, started once for the
    session and stopped after."""
    yield from running_stack(tmp_path_factory.mktemp("stack"), {**STACK_TEST_ENV, "DATASET_SOURCE": str(cifar_archive)})


@pytest.fixture(scope="session")
def postgres_stack(cifar_archive):
    """The same stack with STORE=postgres: its own PostgreSQL cluster (stack/postgres.py)
    instead of the MongoDB wire server, in a directory the postgres user can reach (run as
    root, the server runs as that user; pytest's temporary directories are root-only)."""
    from tests import pg

    pg.programs()  # skipped, or failed under CI=true, without PostgreSQL
    d = pg.reachable_dir("iot-pg-stack-")
    try:
        yield from running_stack(d / "stack", {**STACK_TEST_ENV, "DATASET_SOURCE": str(cifar_archive),
                                               "STORE": "postgres", "STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0"})
    finally:
        pg.remove(d)


@pytest.fixture(scope="session")
def couch_stack(tmp_path_factory, cifar_archive):
    """The same stack with STORE=couchdb: its own pouchdb-server (stack/couchdb.py, CouchDB's
    HTTP API on disk) instead of the MongoDB wire server."""
    from tests import couch

    couch.binary()  # skipped, or failed under CI=true, without pouchdb-server
    yield from running_stack(tmp_path_factory.mktemp("couch-stack"), {
        **STACK_TEST_ENV, "DATASET_SOURCE": str(cifar_archive), "STORE": "couchdb", "STACK_PROMETHEUS": "0",
        "STACK_DASHBOARD": "0"})


def running_stack(directory: Path, env: dict[str, str]):
    """A fixture's body: the embedded stack in ``directory`` with ``env``, yielded as
    ``{"dir", "env", "stack"}``, then stopped, checking that nothing is left running."""
    stack = LocalStack(directory, env, timeout_s=300)
    try:
        stack.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield {"dir": stack.dir, "env": stack.env, "stack": stack}
    pids = stack.processes()
    down = subprocess.run([sys.executable, "-m", "stack", "down"], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    # `stack down` must leave no process behind (gunicorn workers included).
    left = [pid for pid in pids if pid_alive(pid)]
    assert not left, f"processes left after 'stack down': {left}"
    assert not list((stack.dir / "pids").glob("*.pid"))


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by selenium, its console log kept (the live dashboard's
    test, the report page's)."""
    from tests.binaries import required_binary
    from tests.support import HANG_GUARD_S

    driver_path = required_binary("chromedriver", "chromium-driver")
    required_binary("chromium", "chromium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1100", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(HANG_GUARD_S)
    yield driver
    driver.quit()
