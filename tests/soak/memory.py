"""The soak's memory verdicts: every process lifetime judged by the detector
(tests/soak/detector.py), what is left out of the verdict and why, and the detector's
own test (the leaky DB writer must be flagged, the unmodified one just before it not)."""

from __future__ import annotations

from tests.soak.detector import Images, judge

# Processes whose memory grows with the images by design, so they are shown, not judged.
BY_DESIGN = {
    "producer": "the load generator keeps every image's metadata until it writes latencies.csv "
                "(producer/camera.py SentImage: about 1 KB per image measured)",
}
MEMORY_BROKER = ("the memory-only broker keeps every message in memory by design "
                 "(tansu memory://; stack/supervisor.py)")


def ready_times(record: dict) -> list[tuple[str, float]]:
    """(component, unix time it served again and the pipeline had caught up) after each
    restart the soak caused.  A consumer restarted on a backlog reads it as fast as it can,
    and its fetch buffers and client pools grow with the backlog, not with the images: its
    steady state starts once the lag is back in its band (``recovered_after_s``, when the
    event recovered)."""
    from tests.soak.actions import component_of

    out = []
    for e in record.get("events", []):
        back = e["t"] + e["recovered_after_s"] if e.get("recovered_after_s") is not None else 0.0
        if "t" in e and e.get("ready_after_s") is not None and e["what"] not in ("producer", "gunicorn-worker"):
            out.append((component_of(e["what"], record["store"]), max(e["t"] + e["ready_after_s"], back)))
        out += [(s["component"], max(s["t"] + s["ready_after_s"], back)) for s in e.get("steps", [])]
    for phase in ("control", "leak", "back"):
        step = (record.get("detector_phases") or {}).get(phase)
        if step:
            out.append(("db-consumer", step["t"] + step["ready_after_s"]))
    return out


def verdicts(lifetimes: dict, sent_at: list[float], record: dict, bound: float) -> dict:
    images = Images(sent_at)
    ready = ready_times(record)
    phases = record.get("detector_phases") or {}
    leak_pid = (phases.get("leak") or {}).get("pid")
    control_pid = (phases.get("control") or {}).get("pid")
    excluded = dict(BY_DESIGN)
    if "broker" in record.get("not_killed", {}):
        excluded["kafka"] = MEMORY_BROKER
    rows = []
    for life in lifetimes.values():
        first = min(t for t, _ in life.samples)
        # the first time its component served again after this process started, if the soak restarted it
        ready_at = min((t for c, t in ready if c == life.component and t >= first - 2), default=None)
        row = judge(life, images, bound_b_per_image=bound, ready_at=ready_at)
        if life.component == "db-consumer" and life.pid == leak_pid:
            row["build"] = "leaky"
        elif life.component == "db-consumer" and life.pid == control_pid:
            row["build"] = "control"
        if life.component in excluded:
            row["judged"] = False
            row["why_not_judged"] = excluded[life.component]
        else:
            row["judged"] = row.get("build") != "leaky"
        row["series"] = [(round(t, 1), round(rss / 2**20, 2)) for t, rss in sorted(life.samples)]
        rows.append(row)
    judged = [r for r in rows if r["judged"]]
    grows = [f"{r['component']}/{r['role']}/{r['pid']}" for r in judged if r["verdict"] == "grows"]
    leak = next((r for r in rows if r.get("build") == "leaky"), None)
    control = next((r for r in rows if r.get("build") == "control"), None)
    selftest = {"leak": _brief(leak), "control": _brief(control),
                "ok": bool(leak and control and leak["verdict"] == "grows" and control["verdict"] == "flat")}
    slopes = [r["slope_b_per_image"] for r in judged if r.get("slope_b_per_image") is not None]
    return {"bound_b_per_image": bound, "lifetimes": rows, "grows": grows, "excluded": excluded,
            "judged": len([r for r in judged if r["verdict"] != "too short"]),
            "too_short": len([r for r in judged if r["verdict"] == "too short"]),
            "max_judged_b_per_image": max(slopes, default=None),
            "selftest": selftest, "ok": not grows}


def _brief(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: row.get(k) for k in ("pid", "verdict", "slope_b_s", "slope_b_per_image", "late_slope_b_per_image",
                                    "last_slope_b_per_image", "images",
                                    "judged_span_s", "growth_mib")}
