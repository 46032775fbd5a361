"""The benchmark's result dict read: the figures the [perf] issue tracks and its targets, the
table (stdout) and the figure (bench.png)."""

from __future__ import annotations

from pathlib import Path

from stack.stores import store_component

# Latency points, in % of the measured maximum throughput.
LOAD_POINTS = (25, 50, 75)


def step_ms(step: dict, key: str):
    e2e = (step or {}).get("e2e_ms") or {}
    return e2e.get(key)


def issue_figures(result: dict) -> dict:
    """The figures docs/PERFORMANCE.md tracks, each a ratio or a cost per image of this run:

    * ``efficiency``: the bare model's core-ms per image (its best batch) / the pipeline's
      core-ms per image without the producers, at saturation (the ramp's best step);
    * ``producer_core_ms_per_img``: the producers' whole processes per image, same step;
    * ``p50_25pct_over_batch1``, ``p99_50pct_over_batch1``: latency at 25 / 50 % load in
      units of this run's bare-model batch-1 time per image;
    * ``store_core_ms_per_img``: the store server's process per stored image at saturation,
      and ``store_write_ms_p50`` / ``_p99``: one batch write of the DB writer at 50 % load
      (experiments/store_writes.py), the figures that compare ``STORE`` choices."""
    limit = result["limit"] or {}
    per = limit.get("per_batch") or {}
    batch1_ms = (per.get(1) or {}).get("ms_per_img")
    model_core_ms = (per.get(limit.get("best_batch")) or {}).get("core_ms_per_img")
    ramp = result["pipeline"].get("ramp") or []
    saturated = max(ramp, key=lambda st: st.get("throughput_img_s") or 0.0, default={})
    cpu = saturated.get("cpu_ms_per_img") or {}
    own = sum(v for k, v in cpu.items() if k != "producers")
    latency = result["pipeline"].get("latency") or {}
    writes = (latency.get("50pct") or {}).get("store_write_ms") or {}
    store_cpu = cpu.get(store_component(result.get("store")))

    def over(value, unit):
        return round(value / unit, 2) if value is not None and unit else None

    return {"efficiency": over(model_core_ms, own) if own else None,
            "pipeline_core_ms_per_img": round(own, 2) if own else None,
            "model_core_ms_per_img": model_core_ms and round(model_core_ms, 2),
            "producer_core_ms_per_img": cpu.get("producers"),
            "p50_25pct_over_batch1": over(step_ms(latency.get("25pct"), "p50"), batch1_ms),
            "p99_50pct_over_batch1": over(step_ms(latency.get("50pct"), "p99"), batch1_ms),
            "store_core_ms_per_img": store_cpu,
            "store_write_ms_p50": writes.get("p50_ms"), "store_write_ms_p99": writes.get("p99_ms")}


# The [perf] issue's targets (docs/PERFORMANCE.md), each a ratio or a cost per image from
# one run: figure -> (">=" or "<=", bound).  At 224 px only ratio_to_limit has one.
TARGETS = {
    32: {"efficiency": (">=", 0.8), "ratio_to_limit": (">=", 0.55), "producer_core_ms_per_img": ("<=", 0.7),
         "p50_25pct_over_batch1": ("<=", 5.0), "p99_50pct_over_batch1": ("<=", 12.0),
         "ratio_to_baseline": (">=", 5.0)},
    224: {"ratio_to_limit": (">=", 0.85)},
}


def check_targets(result: dict, size: int) -> dict:
    """figure -> {"target": ">= 0.8", "bound": 0.8, "value": ..., "met": bool} for this input
    size's targets."""
    out = {}
    for key, (op, bound) in TARGETS.get(size, TARGETS[32]).items():
        value = result.get(key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        out[key] = {"target": f"{op} {bound:g}", "bound": bound, "value": value, "met": bool(met)}
    return out


def table(result: dict) -> str:
    lim = result["limit"]
    lines = [f"bench {result['run']}  ({result['machine']['cpu_count']} cores, "
             f"load {result['load_average_start']} -> {result['load_average_end']}"
             f"{', SMOKE: not a measurement' if result['smoke'] else ''})",
             f"  model {result.get('model', 'resnet50')} on {result.get('model_engine', 'tensorflow')}, "
             f"{result['input_size']} px, " + ("in the inference consumer (INFERENCE_MODE=embedded)"
                                               if result.get("inference_mode") == "embedded" else "behind the service"),
             "",
             f"  limit (bare model)    batch 1: {lim['batch1_img_s']:7.1f} img/s "
             f"({1000 / lim['batch1_img_s']:.1f} ms/img)   best (batch {lim['best_batch']}): "
             f"{lim['best_img_s']:7.1f} img/s ({1000 / lim['best_img_s']:.2f} ms/img)",
             "  per batch: " + ", ".join(f"{b}: {v['img_s']:.1f}" for b, v in sorted(lim["per_batch"].items())),
             "",
             f"  {'':10} {'max img/s':>10}   {'p50/p95/p99 ms @25%':>20}   {'@50%':>20}   {'@75%':>20}"]
    for name in ("pipeline", "baseline"):
        rec = result[name]
        cells = []
        for pct in LOAD_POINTS:
            st = rec["latency"].get(f"{pct}pct")
            cells.append("/".join("-" if step_ms(st, k) is None else f"{step_ms(st, k):.0f}"
                                  for k in ("p50", "p95", "p99")))
        lines.append(f"  {name:10} {rec['max_img_s']:10.1f}   {cells[0]:>20}   {cells[1]:>20}   {cells[2]:>20}")
    lines += ["", "  targets ([perf] issue, docs/PERFORMANCE.md):"]
    for key, t in result["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"    {key:26} {value:>7}   (target {t['target']}: {'met' if t['met'] else 'MISSED'})")
    lines += ["", "  per image:"]

    def fig(key, unit=""):
        v = result.get(key)
        return "-" if v is None else f"{v:.2f}{unit}"

    lines += [f"    efficiency {fig('efficiency')} (bare model {fig('model_core_ms_per_img', ' core-ms')} / "
              f"pipeline without producers {fig('pipeline_core_ms_per_img', ' core-ms')}), "
              f"producers {fig('producer_core_ms_per_img', ' core-ms')}",
              f"    p50 @25% = {fig('p50_25pct_over_batch1', 'x')}, p99 @50% = {fig('p99_50pct_over_batch1', 'x')} "
              "the bare model's batch-1 time",
              f"    store {result.get('store') or 'mongodb'} (broker storage {result.get('broker_storage') or 'memory'}): "
              f"{fig('store_core_ms_per_img', ' core-ms')} at saturation, one batch write "
              f"p50 {fig('store_write_ms_p50', ' ms')} / p99 {fig('store_write_ms_p99', ' ms')} at 50 %"]
    cost = result["pipeline"].get("image_cost")
    if cost:
        def parts(kind):
            return ", ".join(f"{c} {v:.2f}" for c, v in cost[kind]["cpu_ms_per_img"].items())
        lines += [f"    camera JPEG 640x480 ({cost['jpeg_bytes'] // 1024} KB) vs 32 px PNG at {cost['offered_img_s']} img/s: "
                  f"{cost['jpeg640']['total_core_ms_per_img']:.2f} vs {cost['png32']['total_core_ms_per_img']:.2f} "
                  f"core-ms/img (x{cost['jpeg640_over_png32']})",
                  f"      png32   {parts('png32')}", f"      jpeg640 {parts('jpeg640')}"]
    lines += ["", "  peak RSS (MiB, largest process / whole tree):"]
    for name in ("pipeline", "baseline"):
        parts = [f"{c} {v['peak_rss_mib']}/{v['total_peak_rss_mib']}"
                 for c, v in result[name].get("peak_rss", {}).items()]
        lines.append(f"    {name:9} " + ", ".join(parts))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from analysis.style import PALETTE, plt  # the Agg backend selected

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    lim = result["limit"]
    for i, name in enumerate(("pipeline", "baseline")):
        rec = result[name]
        # By offered rate: the ramp's refinement steps come after the step that saturated.
        points = sorted((s["offered_img_s"], s["throughput_img_s"] or 0) for s in rec["ramp"])
        xs, ys = [x for x, _ in points], [y for _, y in points]
        ax1.plot(xs, ys, "o-", color=PALETTE[i], label=f"{name} (max {rec['max_img_s']:.0f} img/s)")
        for key, style in (("p50", "s:"), ("p99", "o-")):
            vals = [(rec["latency"][f"{p}pct"]["offered_img_s"], step_ms(rec["latency"][f"{p}pct"], key))
                    for p in LOAD_POINTS if step_ms(rec["latency"].get(f"{p}pct"), key) is not None]
            if vals:
                ax2.plot(*zip(*vals), style, color=PALETTE[i], label=f"{name} {key}")
    for y, label, ls in ((lim["best_img_s"], f"model limit, batch {lim['best_batch']}", "--"),
                         (lim["batch1_img_s"], "model, batch 1", ":")):
        ax1.axhline(y, color="#555555", linestyle=ls, linewidth=1)
        ax1.annotate(f"{label}: {y:.0f}", (0, y), xytext=(4, 3), textcoords="offset points",
                     fontsize=8, color="#555555")
    top = max([lim["best_img_s"]] + [s["offered_img_s"] for n in ("pipeline", "baseline")
                                      for s in result[n]["ramp"]])
    ax1.plot([0, top], [0, top], color="#bbbbbb", linewidth=0.8)
    ax1.set(xlabel="offered images/s", ylabel="stored with prediction, images/s",
            title="Throughput", xlim=(0, top * 1.05), ylim=(0, top * 1.1))
    ax1.legend(loc="lower right")
    ax1.grid(True)
    # The [perf] latency targets are multiples of this run's bare-model batch-1 time.
    batch1_ms = 1000 / lim["batch1_img_s"]
    for key, what, ls in (("p50_25pct_over_batch1", "p50 target at 25 %", ":"),
                          ("p99_50pct_over_batch1", "p99 target at 50 %", "--")):
        target = (result.get("targets") or {}).get(key)
        if target:
            times = target["bound"]
            ax2.axhline(times * batch1_ms, color="#D55E00", linestyle=ls, linewidth=1,
                        label=f"{what}: {times:g}× batch-1 = {times * batch1_ms:.0f} ms")
    ax2.set(xlabel="offered images/s (25/50/75 % of max)", ylabel="end-to-end latency, ms",
            title="Latency under load", yscale="log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax2.yaxis.set_major_formatter(plain)
    ax2.yaxis.set_minor_formatter(plain)
    ax2.tick_params(axis="y", which="minor", labelsize=7)
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both")
    # What was measured, so that figures of different runs side by side say which is which.
    setup = ", ".join(str(result[k]) for k in ("model", "inference_mode", "store") if result.get(k))
    if result.get("broker_storage"):
        setup += f", broker on {result['broker_storage']}"
    fig.suptitle(f"bench {result['run']} ({setup}): ratio to limit {result['ratio_to_limit']:.2f}, "
                 f"to baseline {result['ratio_to_baseline'] or float('nan'):.2f}"
                 + ("  (SMOKE)" if result["smoke"] else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
