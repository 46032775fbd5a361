"""report.html: one self-contained page per experiment, to read and to hand in.

Everything is in the one file: the figures are embedded as data URIs, the style is inline,
there is no script and nothing is fetched, so it opens the same offline, attached to a
mail or years later.  The page shows what was run (settings, the model and its weights,
the store, the machine and its load average), the latency CDF with its band, the
percentile table with its intervals and the differences between configurations,
throughput and the knee, where the time goes, accuracy with the model's provenance, each
trial (its settle), images lost (which must be 0) and dead letters.

Every number taken from a JSON file carries ``data-key`` (where it comes from) and
``data-value`` (the value exactly), so a test can check the page against the files.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path

from analysis.report import INTERVAL_NOTE, weights_of
from analysis.stats import REPORTED

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;max-width:1180px;margin:24px auto;
padding:0 20px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 14px}table{border-collapse:collapse;margin:8px 0 6px;font-size:13.5px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}th{background:#f4f4f6}
td.l,th.l{text-align:left}.ci{color:#666;font-size:12px;white-space:nowrap}.note{color:#555;font-size:13px;max-width:1000px}
.ok{color:#0a7a2f;font-weight:600}.bad{color:#b00020;font-weight:600}.warn{color:#9a5b00;font-weight:600}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee}.facts td{text-align:left}
.kpi{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}.kpi div{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:20px}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def number(value, key: str, digits: int = 1, unit: str = "") -> str:
    """A number with where it comes from (``data-key``) and its exact value (``data-value``)."""
    if value is None:
        return f'<span data-key="{esc(key)}" data-value="">–</span>'
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return f'<span data-key="{esc(key)}" data-value="{esc(json.dumps(value))}">{text}{esc(unit)}</span>'


def with_ci(row: dict, value_key: str, low_key: str, high_key: str, prefix: str) -> str:
    cell = number(row[value_key], f"{prefix}/{value_key}")
    if row.get(low_key) is not None:
        cell += (f' <span class="ci">[{number(row[low_key], f"{prefix}/{low_key}")}, '
                 f'{number(row[high_key], f"{prefix}/{high_key}")}]</span>')
    return cell


def table(headers: list[str], rows: list[list[str]], left: int = 1, cls: str = "") -> str:
    """Cells are HTML already; the first ``left`` columns align left."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def figure(path: Path | None, alt: str, caption: str = "", width: int | None = None) -> str:
    """The PNG at ``path`` embedded as a data URI (``width``: the most CSS pixels it takes)."""
    if path is None or not Path(path).is_file():
        return f'<p class="note">{esc(alt)}: not drawn (no data for it).</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<figcaption class=note>{esc(caption)}</figcaption>" if caption else ""
    size = f' style="max-width:{width}px"' if width else ""
    return f'<figure><img alt="{esc(alt)}"{size} src="data:image/png;base64,{data}">{cap}</figure>'


def _when(ts) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if ts else "–"


def what_was_run(record: dict, runs: list[dict]) -> str:
    s, model, host = record.get("settings", {}), record.get("model") or {}, record.get("host") or {}
    store, stop = record.get("store") or {}, record.get("stopping")
    rate = s.get("rate_per_producer")
    facts = [
        ("configurations", ", ".join(f"{n} producer{'s' if n > 1 else ''}" for n in s.get("producers", []))),
        ("images per producer per trial", number(s.get("images_per_producer"), "experiment/settings/images_per_producer")),
        ("rate per producer", number(rate, "experiment/settings/rate_per_producer", 2, " img/s")
         + esc(f" ({'given' if s.get('rate_from') == 'given' else 'chosen from the measured capacity'})")),
        ("trials per configuration", esc(", ".join(sorted({str(len(r.get("trials") or [None])) for r in runs})))
         + esc(f", {s.get('order', 'in order')}")),
        ("stopping rule", "none" if not stop else esc(stop["rule"]) + " — " + (
            f'<span class="ok">met</span> after {stop["rounds"]} round(s)' if stop["met"] else
            f'<span class="bad">NOT met</span> after {stop["rounds"]} round(s) (the cap)')),
        ("target", esc(record.get("target"))),
        ("model", esc(model.get("id")) + (' <span class="bad">untrained: labels are not meaningful</span>'
                                         if model.get("untrained") or "untrained" in str(model.get("id")) else "")),
        ("model weights", esc(model.get("weights_source") or "–") + (f" (sha256 {esc(model['weights_sha256'])})"
                                                                     if model.get("weights_sha256") else "")),
        ("model input", esc(f"{model['input_size']} px") if model.get("input_size") else "–"),
        ("store", esc(f"{store.get('kind', '?')} at {store.get('where', '?')}") if store else "–"),
        ("machine", esc(", ".join(str(x) for x in (host.get("hostname"), host.get("cpu_model"),
                                                    f"{host.get('cpu_count')} cores", f"{host.get('memory_gib')} GiB",
                                                    host.get("platform"), f"Python {host.get('python')}") if x))),
        ("load average (1, 5, 15 min)", esc(f"{record.get('load_average_start')} at the start, "
                                            f"{record.get('load_average_end')} at the end")),
        ("ran", esc(f"{_when(record.get('started_at'))} to {_when(record.get('finished_at'))}")),
        ("versions", esc(", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items()))),
    ]
    return table(["", ""], [[esc(k), v] for k, v in facts], left=2, cls="facts")


def percentile_section(rows: list[dict], diffs: list[dict]) -> str:
    headers = ["configuration", "trials", "images"] + [f"p{p} ms [95 % CI]" for p in REPORTED] + ["max ms"]
    body = [[esc(r["run"]), number(r["trials"], f"{r['run']}/trials"), number(r["count"], f"{r['run']}/count")]
            + [with_ci(r, f"p{p}_ms", f"p{p}_ci_low_ms", f"p{p}_ci_high_ms", r["run"]) for p in REPORTED]
            + [number(r["max_ms"], f"{r['run']}/max_ms")] for r in rows]
    out = table(headers, body) + f'<p class="note">{esc(INTERVAL_NOTE)}</p>'
    if diffs:
        drows = []
        for i, d in enumerate(diffs):
            key = f"differences/{i}"
            verdict = d["verdict"]
            drows.append([esc(f"{d['a']} → {d['b']}"), esc(d["percentile"]),
                          with_ci(d, "difference_ms", "ci_low_ms", "ci_high_ms", key),
                          "paired by round" if d["paired"] else "independent",
                          f'<span class="{"warn" if verdict != "no difference shown" else ""}">{esc(verdict)}</span>'])
        out += ("<h3>Differences between configurations</h3>" +
                table(["a → b", "percentile", "b − a ms [95 % CI]", "resampled", "verdict"], drows, left=2) +
                '<p class="note">A difference is called one only where the interval of b − a excludes 0.</p>')
    return out


def throughput_section(record: dict, rows: list[dict], runs: list[dict]) -> str:
    by_name = {r["dir"]: r["summary"] for r in runs}
    body = []
    for r in rows:
        s = by_name.get(r["run"], {})
        body.append([esc(r["run"]), number(s.get("offered_img_s"), f"experiment/{r['run']}/offered_img_s"),
                     with_ci(r, "throughput_img_s", "throughput_ci_low_img_s", "throughput_ci_high_img_s", r["run"]),
                     number(s.get("result_rate_img_s"), f"experiment/{r['run']}/result_rate_img_s")])
    knee, cap = record.get("knee"), record.get("capacity")
    text = ("The knee (the first load whose stored rate is below 95 % of the offered rate): "
            + (f"<b>{knee['producers']} producers</b>, {knee['offered_img_s']} img/s offered." if knee else
               "not reached: the pipeline kept up with every load offered."))
    if cap:
        text += f" Measured capacity before the sweep: {cap['img_s']:.1f} img/s."
    return (table(["configuration", "offered img/s", "throughput img/s [95 % CI]", "result rate img/s"], body)
            + f'<p class="note">{text}</p>')


def losses_section(record: dict, runs: list[dict]) -> str:
    body, total = [], 0
    trials = [t for run in runs for t in (run.get("trials") or [{"dir": run["dir"], "summary": run["summary"]}])]
    for t in sorted(trials, key=lambda t: t.get("order") or 0):  # the order they ran in
        s, settle = t["summary"], t.get("settle") or {}
        key = f"experiment/{t['dir']}"
        total += s.get("lost") or 0
        body.append([esc(t["dir"]), esc(t.get("order", "")), number(s.get("sent"), f"{key}/sent"),
                     number(s.get("results"), f"{key}/results"),
                     number(s.get("stored_with_prediction"), f"{key}/stored_with_prediction"),
                     f'<span class="{"bad" if s.get("lost") else "ok"}">{number(s.get("lost"), f"{key}/lost")}</span>',
                     number((s.get("e2e_ms") or {}).get("p95"), f"{key}/p95"),
                     number(settle.get("settle_s"), f"{key}/settle_s", 1, " s")
                     + ("" if settle.get("settled", True) else ' <span class="bad">not settled</span>'),
                     esc(", ".join(settle.get("measured", [])) or "–"),
                     esc(t.get("load_average_before", ""))])
    dead = record.get("dead_letters") or {}
    lost_line = (f'<p><b>Images lost:</b> <span class="{"bad" if total else "ok"}" id="lost-total">'
                 f'{number(total, "experiment/lost_total")}</span> (must be 0). <b>Dead letters</b> during the '
                 f'experiment: <span id="dead-letters">{number(dead.get("count"), "experiment/dead_letters/count")}</span>'
                 + (f" ({esc(', '.join(f'{k}: {v}' for k, v in dead['by_reason'].items()))})"
                    if dead.get("by_reason") else "")
                 + (f' <span class="warn">not read: {esc(dead["error"])}</span>' if dead.get("error") else "") + "</p>")
    return lost_line + table(["trial", "order", "sent", "results", "stored", "lost", "p95 ms", "settle",
                              "settle measured", "load average before"], body)


def accuracy_section(accuracy: dict | None, record: dict, confusion: Path | None) -> str:
    model = record.get("model") or {}
    if not accuracy:
        return '<p class="note">No ground-truth labels: no accuracy.</p>'
    pooled = accuracy.get("all_runs") or next(iter(accuracy["runs"].values()))
    verdict = ("" if accuracy.get("meaningful") else
               ' <span class="bad">NOT meaningful: the model is untrained, its predictions are arbitrary</span>')
    # The service's /v1/model when it was asked (none with INFERENCE_MODE=embedded), else the
    # runs' own model ids; the weights' kind always, their source when known.
    model_id = model.get("id") or ", ".join(sorted({r.get("model") or "?" for r in accuracy["runs"].values()}))
    source = f" ({esc(model['weights_source'])})" if model.get("weights_source") else ""
    return (f"<p>Accuracy over {number(pooled['n'], 'accuracy/n')} labelled images: "
            f"{number(100 * pooled['overall_accuracy'], 'accuracy/overall_pct')} %{verdict}. Model "
            f"{esc(model_id)}, weights {esc(weights_of(model_id) or '?')}{source}"
            + (f", sha256 {esc(model['weights_sha256'])}" if model.get("weights_sha256") else "") + ".</p>"
            + figure(confusion, "Confusion matrix", width=640))


def write_report(out: Path, *, rows: list[dict], diffs: list[dict], record: dict | None, accuracy: dict | None,
                 figures: dict[str, Path | None], run_summaries: list[dict], name: str | None = None) -> Path:
    """report.html in ``out``.  ``record`` is experiment.json (None for plain run
    directories: the page then says what the run directories say); ``run_summaries`` is
    experiment.json's ``runs`` or, without one, a stand-in built from the summaries; ``name``
    the experiment's (its directory's name)."""
    record = record or {}
    runs = record.get("runs") or run_summaries
    title = f"Latency experiment {name or out.name}" if record else f"Latency report {name or out.name}"
    lost = sum((r["summary"].get("lost") or 0) for r in runs)
    best = rows[0] if rows else {}
    kpis = (f'<div>configurations<b>{len(rows)}</b></div><div>trials each<b>{best.get("trials", "–")}</b></div>'
            f'<div>images lost<b class="{"bad" if lost else "ok"}">{lost}</b></div>'
            f'<div>dead letters<b>{esc((record.get("dead_letters") or {}).get("count", "–"))}</b></div>')
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="sub">End-to-end latency of the IoT image pipeline (producer send → result received), '
            f"{esc(_when(record.get('started_at')))}.</p>", f'<div class="kpi">{kpis}</div>',
            "<h2>What was run</h2>", what_was_run(record, runs) if record else
            '<p class="note">No experiment.json: only the run directories\' own files are known.</p>',
            "<h2>Latency</h2>", figure(figures.get("cdf"), "Latency CDF",
                                        "Each configuration's pooled CDF; the shaded band is its 95 % confidence "
                                        "band, the marks p50, p95 and p99."),
            percentile_section(rows, diffs),
            "<h2>Throughput and the knee</h2>", throughput_section(record, rows, runs),
            figure(figures.get("throughput"), "Throughput and latency against load"),
            "<h2>Where the time goes</h2>", figure(figures.get("stages"), "Stage breakdown"),
            "<h2>Accuracy</h2>", accuracy_section(accuracy, record, figures.get("confusion")),
            "<h2>Trials, images lost and dead letters</h2>", losses_section(record, runs),
            '<p class="note">Files beside this page: experiment.json, percentiles.csv and percentiles.json, '
            "differences.csv, each configuration's directory with its trials (docs/USAGE.md).</p>"]
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
