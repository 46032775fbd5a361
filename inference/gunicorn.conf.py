"""Gunicorn configuration of the inference service.

    gunicorn -c inference/gunicorn.conf.py 'inference:create_app()'

Every value is a setting (common.settings.GunicornSettings: INFERENCE_BIND,
GUNICORN_WORKERS, ...), read from the environment and validated like every other
component's.  The workers' settings (ServiceSettings, MetricsSettings, LogSettings) are
checked here too, so a bad value stops the master with one message naming the variable
instead of every worker failing to boot.  This file is executed by the *master*: it must
import nothing heavy (no TensorFlow, no torch, not even the app); pydantic is light.
"""

import os
import shutil
import stat
import sys
import tempfile

# The project root, so that the settings import whatever the working directory
# (Gunicorn puts its own cwd on sys.path, the unit's WorkingDirectory on the VMs).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.settings import (GunicornSettings, LogSettings, MetricsSettings, ServiceSettings,  # noqa: E402
                             SettingsError)

try:
    _s = GunicornSettings()
    ServiceSettings(), MetricsSettings(), LogSettings()
except SettingsError as exc:
    # SystemExit passes through Gunicorn's loading of this file: the message, status 1.
    sys.exit(f"inference service: {exc}")


# Where to listen.  Loopback by default: the service has no TLS and the bearer token
# is optional, so exposing it is a deliberate choice (INFERENCE_BIND=0.0.0.0:8000).
bind = _s.inference_bind

# The app is created in each worker after the fork, never in the master: the master
# stays a small supervisor without TensorFlow (TF is not fork-safe once its thread
# pools exist), and a worker that dies is replaced by a clean fork.
preload_app = False
wsgi_app = "inference:create_app()"

# ONE worker by default.  Every worker holds its own TensorFlow runtime and ResNet50
# (about 0.6-1 GB RSS each) and TF already spreads one forward pass over all cores
# (intra-op threads), so on a 2-core host a second worker only doubles the memory
# and makes the two processes fight over the same cores.  Throughput comes from
# batching instead: see the threads below and MODEL_BATCH_*.  Raise it on hosts
# with many cores (with TF_INTRA_OP_THREADS = cores / workers).
workers = _s.gunicorn_workers

# gthread: request threads are cheap (they spend their time waiting on the dynamic
# batcher's futures, the GIL is released during the TF call), and several in-flight
# requests are what the batcher merges into one model call.  8 threads lets 8
# concurrent clients (consumer replicas, benchmark connections) be batched together
# while the model is busy, without an unbounded pile-up.
worker_class = "gthread"
threads = _s.gunicorn_threads

# Seconds without a worker heartbeat before the master kills it.  The gthread worker
# heartbeats from its main loop, not from the request threads, and the model loads in
# a background thread, so this only fires on a truly hung worker; 60 s leaves room
# for a slow TensorFlow import on a loaded 2-core host.
timeout = _s.gunicorn_timeout

# On SIGTERM, requests in flight get this long to finish (a batch at 224x224 on CPU
# can take several seconds).
graceful_timeout = _s.gunicorn_graceful_timeout

# The inference consumer keeps its HTTP connection open between batches.
keepalive = _s.gunicorn_keepalive

# No worker recycling by default: a new worker re-imports TF and reloads the model
# (tens of seconds); set GUNICORN_MAX_REQUESTS if a leak ever shows up.
max_requests = _s.gunicorn_max_requests
max_requests_jitter = _s.gunicorn_max_requests_jitter

# Pending connections the kernel queues while all threads are busy.
backlog = _s.gunicorn_backlog

# SO_REUSEPORT (GUNICORN_REUSE_PORT): a second master can bind the same address while
# this one serves, and the kernel spreads new connections over both; the local stack's
# handover (stack/handover.py) starts the new code so and stops the old one once the new
# one is ready.  Off by default, so that a second service started by mistake on a taken
# port fails instead of silently taking half of its connections.
reuse_port = _s.gunicorn_reuse_port

# Heartbeat file on tmpfs where there is one: a slow or full disk must not make the
# master think a busy worker is hung.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Gunicorn >= 25.1 opens a control socket at one fixed per-user path
# (~/.gunicorn/gunicorn.ctl): two services or test runs on one host would take it
# from each other.  Off unless GUNICORN_CONTROL_SOCKET names a path for gunicornc.
if _s.gunicorn_control_socket:
    control_socket = _s.gunicorn_control_socket
else:
    control_socket_disable = True


def _stderr_file() -> str:
    """stderr as a file Gunicorn can open: /dev/stderr, except where stderr is a socket,
    as in a systemd unit with StandardError=journal (the VMs), whose /dev/stderr open()
    refuses with ENXIO ("No such device or address") and Gunicorn exits; there "-"
    (stdout), which goes to the same journal."""
    try:
        if stat.S_ISSOCK(os.fstat(2).st_mode):
            return "-"
    except OSError:
        return "-"
    return "/dev/stderr" if os.path.exists("/dev/stderr") else "-"


# Logs: everything to stderr, access log included ("-" would send it to stdout).
errorlog = "-"
accesslog = _s.gunicorn_accesslog or _stderr_file()
loglevel = _s.log_level.lower()
# Client, request line, status, bytes, duration in seconds, worker pid.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss pid=%(p)s'


# Prometheus multiprocess mode (inference/metrics.py): every worker writes its metrics
# to files in PROMETHEUS_MULTIPROC_DIR, and /metrics adds them up.  Set in on_starting, in
# the master, once, before any worker is forked (prometheus_client reads it at import;
# not at the top of this file, which a reload reads again and tests run in-process).  A
# given directory is emptied (files of an earlier run would add up with this one's);
# without one, a private temporary directory, removed when the master exits.
_metrics_dir_owned = False
_metrics_dir = ""


def on_starting(server):
    global _metrics_dir_owned, _metrics_dir
    path = GunicornSettings().prometheus_multiproc_dir
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="iot-inference-metrics-")
        _metrics_dir_owned = True
    # The workers' environment: they inherit the master's, and prometheus_client reads it there.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir = path
    server.log.info("metrics: multiprocess files in %s", path)


def child_exit(server, worker):
    """A worker is gone: its live gauges (queue depth, model ready) stop counting."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
    except Exception as exc:  # noqa: BLE001 - metrics must never stop the master
        server.log.warning("metrics: could not mark worker %s dead: %s", worker.pid, exc)


def on_exit(server):
    if _metrics_dir_owned:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def when_ready(server):
    server.log.info("master %s ready on %s; tensorflow imported in master: %s; torch imported in master: %s",
                    os.getpid(), bind, "tensorflow" in sys.modules, "torch" in sys.modules)


def post_fork(server, worker):
    server.log.info("worker %s forked; it loads the model in a background thread", worker.pid)
