"""The soak's outputs: soak.json (everything measured and every verdict) and soak.png
(throughput, p99, lag and each process's memory over time, the kills marked), in the
look of the analysis' figures (analysis/style.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from analysis.style import STYLE, colour, plt, save
from common.store import PREDICTION, PREDICTION_STORED_AT, SENT_AT, STORED_AT

BIN_S = 10.0
BIG_MIB = 300


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, math.ceil(0.99 * len(v)) - 1)]


def stored_series(stack, producer_ids: list[str]) -> dict:
    """From the store: when each image was complete (its image and its prediction stored),
    and per ``BIN_S`` the images completed per second and the p99 of sent -> complete."""
    docs = read_docs(stack, producer_ids)
    done = sorted((max(d[PREDICTION_STORED_AT], d[STORED_AT]), d[SENT_AT]) for d in docs
                  if d.get(PREDICTION) and d.get(PREDICTION_STORED_AT) and d.get(STORED_AT) and d.get(SENT_AT))
    series: dict = {"bin_s": BIN_S, "t": [], "throughput_img_s": [], "p99_s": []}
    if done:
        t0 = done[0][0]
        bins: dict[int, list[float]] = {}
        for complete, sent in done:
            bins.setdefault(int((complete - t0) // BIN_S), []).append(complete - sent)
        for i in range(max(bins) + 1):
            lat = bins.get(i, [])
            series["t"].append(round(t0 + (i + 0.5) * BIN_S, 1))
            series["throughput_img_s"].append(round(len(lat) / BIN_S, 2))
            series["p99_s"].append(None if not lat else round(p99(lat), 3))
    return {"stored_at": [c for c, _ in done], "sent_at": sorted(s for _, s in done), "series": series}


def read_docs(stack, producer_ids: list[str], tries: int = 3) -> list[dict]:
    """The producers' stored documents' times, through the store reader (the soak's own
    checks read the store with its own client: tests/faults/stores.py); a busy host's
    server may cancel a long read, which is tried again."""
    from common.settings import MongoSettings
    from common.store import open_reader

    for attempt in range(tries):
        if stack.env.get("STORE", "mongodb") == "mongodb":
            store = open_reader(MongoSettings(mongo_uri=stack.env["MONGO_URI"], mongo_timeout_ms=30_000,
                                              mongo_socket_timeout_ms=300_000), store="mongodb")
        else:
            store = stack.store()
        try:
            return list(store.by_producers(producer_ids, (SENT_AT, PREDICTION_STORED_AT, STORED_AT, PREDICTION)))
        except Exception:
            if attempt == tries - 1:
                raise
            time.sleep(5)
        finally:
            store.close()
    return []


def sizing(record: dict) -> str:
    """Where the soak's load came from, in one line."""
    cap = record.get("capacity")
    if not cap:
        return f"{record['rate_img_s']:g} img/s chosen (--rate)"
    probe = cap.get("catch_up") or {}
    text = f"half of the lower of the ramp's {cap['img_s']:g} img/s"
    if probe:
        text += f" and the catch-up probe's {probe['catch_up_img_s']:g}"
    return text


def table(record: dict) -> str:
    """The events and the checks, as text (the terminal, docs/RELIABILITY.md)."""
    lines = [f"Load: {record['rate_img_s']:g} img/s, {sizing(record)}.", "",
             "| t s | event | recovered after s | peak lag | ok |", "|---:|---|---:|---:|---|"]
    for e in record.get("events", []):
        t = e["t"] - record["t_start"] if "t" in e else e["at_s"]
        what = e["what"] + (f" ({e['killed']})" if e.get("killed") else "") + (f": {e['error']}" if e.get("error") else "")
        ok = "skipped" if "skipped" in e else "yes" if e.get("lag_ok") and "error" not in e else "NO"
        lines.append(f"| {t:.0f} | {what} | {e.get('recovered_after_s', '-')} | {e.get('peak_lag', '-')} | {ok} |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in record.get("checks", {}).items()]
    return "\n".join(lines)


def write(record: dict, out: Path, sampler_lag: list[dict]) -> tuple[Path, Path]:
    record.setdefault("lag", {})["samples"] = [{k: (round(v, 2) if k == "t" else v) for k, v in s.items()}
                                                for s in sampler_lag]
    path = out / "soak.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path, figure(record, out / "soak.png")


def _mark(ax, record: dict, t0: float, labels: bool) -> None:
    for e in record.get("events", []):
        if "t" not in e:
            continue
        x = (e["t"] - t0) / 60
        if e["what"] == "rolling-upgrade":
            ax.axvspan(x, x + e.get("took_s", 0) / 60, color="#56B4E9", alpha=0.25, lw=0)
        else:
            ax.axvline(x, color="#D55E00", lw=0.9, ls="--", alpha=0.8)
        if labels:
            ax.text(x, 1.01, e["what"], rotation=35, fontsize=7.5, transform=ax.get_xaxis_transform(),
                    ha="left", va="bottom", color="#444")
    phases = record.get("detector_phases") or {}
    for name, tint in (("control", "#009E73"), ("leak", "#CC79A7")):
        if phases.get(name):
            start = (phases[name]["t"] - t0) / 60
            ax.axvspan(start, start + (phases["phase_s"] + phases[name]["ready_after_s"]) / 60, color=tint,
                       alpha=0.12, lw=0)
            if labels:
                ax.text(start, 1.01, f"detector: {'leaky build' if name == 'leak' else 'unmodified'}",
                        rotation=35, fontsize=7.5, transform=ax.get_xaxis_transform(), ha="left", va="bottom",
                        color=tint)


def figure(record: dict, path: Path) -> Path:
    t0 = record["t_start"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(5, 1, figsize=(11, 14), sharex=True,
                                 gridspec_kw={"height_ratios": [1, 1, 1, 1.6, 0.8]})
        s = record.get("series", {})
        x = [(t - t0) / 60 for t in s.get("t", [])]
        axes[0].plot(x, s.get("throughput_img_s", []), color=colour(0), lw=1.2, label="stored with prediction")
        axes[0].axhline(record["rate_img_s"], color="#777", lw=0.8, ls=":", label=f"offered {record['rate_img_s']:g}")
        axes[0].set_ylabel("images/s")
        axes[0].legend(loc="lower left")
        axes[1].plot(x, s.get("p99_s", []), color=colour(1), lw=1.2)
        axes[1].set_yscale("log")
        axes[1].set_ylabel("p99 sent → stored, s")
        lag = record.get("lag", {}).get("samples", [])
        band = record.get("lag", {}).get("zero_band", 0)
        for i, group in enumerate(("iot-inference", "iot-db-writer")):
            axes[2].plot([(r["t"] - t0) / 60 for r in lag], [r.get(group) for r in lag], lw=1, color=colour(2 + i),
                         label=f"{group} group")
            axes[2].axhline(band.get(group, 0) if isinstance(band, dict) else band, color=colour(2 + i), lw=0.9,
                            ls=":", label=f"{group}: back-to-zero band")
        axes[2].set_yscale("symlog", linthresh=10)
        axes[2].set_ylim(bottom=0)
        axes[2].set_ylabel("consumer lag, records")
        axes[2].legend(loc="upper left")
        seen: dict[str, str] = {}
        for row in record.get("memory", {}).get("lifetimes", []):
            name = row["component"] if row["role"] in ("main", "supervisor") or row["component"] == "producer" \
                else f"{row['component']} {row['role']}"
            leaky = row.get("build") == "leaky"
            label = "db-consumer, leaky build" if leaky else name
            c = "#CC0000" if leaky else seen.setdefault(name, colour(len(seen)))
            pts = row["series"]
            # The model's workers (hundreds of MiB) get a panel of their own: on one linear
            # axis they would flatten every other process's line.
            ax = axes[4] if max((m for _, m in pts), default=0) > BIG_MIB else axes[3]
            ax.plot([(t - t0) / 60 for t, _ in pts], [m for _, m in pts], lw=2 if leaky else 1, color=c,
                    label=label if label not in ax.get_legend_handles_labels()[1] else None)
        axes[3].set_ylabel("resident memory, MiB")
        axes[4].set_ylabel(f"MiB (> {BIG_MIB})")
        axes[4].set_xlabel("minutes since the producers started")
        for ax in axes[3:]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        for i, ax in enumerate(axes):
            ax.grid(True)
            _mark(ax, record, t0, labels=i == 0)
        verdict = "PASSED" if record.get("ok") else "FAILED"
        fig.suptitle(f"Soak: {record['duration_s'] / 60:g} min at {record['rate_img_s']:g} img/s, seed "
                     f"{record['seed']}, {len([e for e in record.get('events', []) if 't' in e])} events: {verdict}\n"
                     f"(the load: {sizing(record)})",
                     y=1.0)
        fig.tight_layout()
        return save(fig, path)
