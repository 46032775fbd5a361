"""Several ``make bench`` runs side by side in one figure: what one choice changes (``STORE``,
``INFERENCE_MODE``, ``STACK_BROKER_STORAGE``, ``OMP_WAIT_POLICY``...) when everything else
is the same.  Reads each run's bench.json; writes a PNG with three panels (throughput over
offered load, end-to-end p99 at the latency points, the store's CPU per image and one batch
write) and prints the figures it drew.

    .venv/bin/python -m bench.compare_runs results/bench/store-mongodb results/bench/store-postgres \\
        results/bench/store-couchdb --label store --out docs/img/stores.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"store": lambda r: r.get("store") or "mongodb",
          "mode": lambda r: r.get("inference_mode") or "service",
          "broker": lambda r: r.get("broker_storage") or "memory",
          "run": lambda r: r["run"]}


def load(run_dir: Path) -> dict:
    path = run_dir / "bench.json" if run_dir.is_dir() else run_dir
    return json.loads(path.read_text())


def figure(runs: list[dict], names: list[str], out: Path, title: str) -> None:
    from analysis.style import PALETTE, plt

    from matplotlib.ticker import FuncFormatter

    from analysis.style import plain_number

    fig, (ax1, ax2, ax3, ax4) = plt.subplots(1, 4, figsize=(19, 4.8), gridspec_kw={"width_ratios": [3, 3, 2, 2]})
    for i, (r, name) in enumerate(zip(runs, names)):
        colour = PALETTE[i % len(PALETTE)]
        ramp = sorted((s["offered_img_s"], s["throughput_img_s"] or 0) for s in r["pipeline"]["ramp"])
        ax1.plot(*zip(*ramp), "o-", color=colour, label=f"{name}: max {r['pipeline_max_img_s']:.0f} img/s")
        points = [(st["offered_img_s"], st["e2e_ms"]["p99"]) for st in r["pipeline"]["latency"].values()
                  if st.get("e2e_ms")]
        if points:
            ax2.plot(*zip(*sorted(points)), "o-", color=colour, label=name)
    top = max(s["offered_img_s"] for r in runs for s in r["pipeline"]["ramp"])
    ax1.plot([0, top], [0, top], color="#bbbbbb", linewidth=0.8)
    ax1.set(xlabel="offered images/s", ylabel="stored with prediction, images/s", title="Throughput")
    ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(True)
    ax2.set(xlabel="offered images/s (25/50/75 % of each one's max)", ylabel="end-to-end p99, ms",
            title="Latency under load", yscale="log")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both")
    ax2.yaxis.set_major_formatter(FuncFormatter(plain_number))
    ax2.yaxis.set_minor_formatter(FuncFormatter(plain_number))
    ax2.tick_params(axis="y", which="minor", labelsize=7)
    xs = list(range(len(runs)))
    colours = [PALETTE[i % len(PALETTE)] for i in xs]
    cpu = [r.get("store_core_ms_per_img") or 0 for r in runs]
    ax3.bar(xs, cpu, 0.6, color=colours)
    for x, v in zip(xs, cpu):
        ax3.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax3.set_xticks(xs, names)
    ax3.set(ylabel="core-ms per stored image", title="The store's CPU (at saturation)")
    ax3.grid(True, axis="y")
    width = 0.38
    for j, (key, hatch) in enumerate((("store_write_ms_p50", ""), ("store_write_ms_p99", "//"))):
        values = [r.get(key) or 0 for r in runs]
        ax4.bar([x + (j - 0.5) * width for x in xs], values, width, color=colours, hatch=hatch,
                edgecolor="white", label=key.rsplit("_", 1)[-1])
    ax4.set_xticks(xs, names)
    ax4.set(ylabel="ms", title="One batch write (at 50 % load)")
    ax4.legend(fontsize=8, title="plain p50, hatched p99", title_fontsize=8)
    ax4.grid(True, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories (or their bench.json)")
    p.add_argument("--label", choices=sorted(LABELS), default="run", help="what names each run in the figure")
    p.add_argument("--out", type=Path, default=Path("results/bench/compare.png"))
    p.add_argument("--title", default="make bench, side by side")
    args = p.parse_args(argv)
    runs = [load(d) for d in args.runs]
    names = [LABELS[args.label](r) for r in runs]
    for r, name in zip(runs, names):
        print(f"{name:10} run {r['run']}  max {r['pipeline_max_img_s']:7.1f} img/s  ratio to limit "
              f"{r['ratio_to_limit']:.2f}  store {r.get('store_core_ms_per_img')} core-ms/img  write p50/p99 "
              f"{r.get('store_write_ms_p50')}/{r.get('store_write_ms_p99')} ms  load {r['load_average_start']}")
    figure(runs, names, args.out, args.title)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
