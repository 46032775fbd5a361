"""What an experiment records about what was run, beyond its own settings: the machine,
the package versions, the model the service serves (and its weights), the store, and the
dead letters the pipeline wrote meanwhile (experiment.json, report.html)."""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata
from pathlib import Path

import requests

log = logging.getLogger(__name__)


def _proc_value(path: str, key: str) -> str | None:
    """The value of ``key`` in a ``key: value`` file of /proc (None where it cannot be read)."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def host_facts() -> dict:
    mem_kb = (_proc_value("/proc/meminfo", "MemTotal") or "").split(" ")[0]
    return {"hostname": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": _proc_value("/proc/cpuinfo", "model name"),
            "memory_gib": round(int(mem_kb) / 2**20, 1) if mem_kb.isdigit() else None}


def versions() -> dict:
    out = {}
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "torch", "kafka-python", "pymongo", "psycopg", "flask",
                "gunicorn", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_info(env: dict, token: str | None) -> dict | None:
    url = env.get("INFERENCE_URL", "").split(",")[0]
    if not url:
        return None
    try:
        r = requests.get(f"{url.rstrip('/')}/v1/model", timeout=5,
                         headers={"Authorization": f"Bearer {token}"} if token else {})
        return r.json() if r.ok else None
    except (requests.RequestException, ValueError):
        return None


def store_info(env: dict) -> dict | None:
    """The store the images went to: its kind and where (credentials redacted)."""
    from common.store.opening import reader_of

    try:
        store = reader_of(env)
    except Exception as exc:  # noqa: BLE001 - a fact not known is recorded as such
        log.warning("store not described: %s", exc)
        return None
    try:
        return {"kind": store.name, "where": store.where}
    finally:
        store.close()


def dead_letters(env: dict, since: float, idle_ms: int = 3000) -> dict:
    """The dead letters written since ``since`` (unix seconds), by reason: read from the
    dead-letter topic (the DLQ tool's reader); ``count`` None where it cannot be read."""
    from common.settings import KafkaSettings
    from consumers.dlq_entries import ToolError, read_dlq

    try:
        entries = read_dlq(KafkaSettings(kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"]), idle_ms)
    except (ToolError, KeyError) as exc:
        return {"count": None, "error": str(exc)}
    mine = [e.dead for e in entries if e.dead is not None and e.dead.failed_at >= since]
    reasons: dict[str, int] = {}
    for d in mine:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    return {"count": len(mine), "by_reason": reasons, "since": since}
