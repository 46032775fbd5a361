"""``python -m analysis RUN_DIR... --out OUT_DIR``: latency report over pipeline runs.

Each RUN_DIR needs only latencies.csv; summary.json, stages.csv and the store add what
they can.  ``--from-store`` adds a pseudo-run read straight from the store STORE names
(MongoDB, PostgreSQL or CouchDB, its settings from the environment as for the pipeline:
MONGO_URI, POSTGRES_* or COUCHDB_*; latency = stored_at - sent_at); ``--stages-from-store``
fills in stage timestamps of the run directories' images from it.  ``--from-mongo URI``
and ``--mongo URI`` do the same with MongoDB at URI, whatever STORE says.

Outputs in OUT_DIR:
  percentiles.csv   run,trials,count, p50_ms,p50_ci_low_ms,p50_ci_high_ms (and so for p90,
                    p95, p99), max_ms, throughput_img_s,throughput_ci_low_img_s,
                    throughput_ci_high_img_s (also printed on stdout as a Markdown table)
  latency_cdf.png   one CDF curve per run with its 95 % band, p50/p95/p99 marked
  differences.csv   each run against the next: per percentile b - a, its 95 % interval
                    (paired by round within one experiment) and whether it excludes 0
  stages.png        median / p95 time per pipeline stage (needs stage data)
  throughput.png    images/s and p95 against producer count (or run)
  accuracy.json, confusion.png   when images carry ground-truth labels
  percentiles.json  the tables above with every value exact (rows, differences)
  report.html       one self-contained page: what was run (experiment.json, when the
                    RUN_DIRs are one experiment's configurations), the figures, the tables,
                    the trials, images lost and dead letters

A RUN_DIR that is an experiment directory (experiment.json) stands for its configurations.

``--compare BEFORE AFTER`` compares two experiments instead (analysis/compare.py): per
configuration and percentile both values with their intervals, after - before with its
interval (the two resampled independently), and whether they differ beyond their
intervals (that interval excludes 0); compare.csv in OUT_DIR.

Percentiles are exact nearest-rank: for n sorted samples x[1..n] the p-th percentile is
x[ceil(p/100*n)], always a measured sample, never interpolated (analysis/stats.py).
Their 95 % confidence intervals resample trials, then blocks of consecutive images within
each (analysis/intervals.py).  A RUN_DIR that pools trials (make experiment REPEAT=K) is
read trial by trial.  Throughput: summary.json's throughput_img_s (a pooled view's: the
mean of its trials'), else results / (last result_at - first sent_at); its interval is
Student's t over the trials.  Exit status 2 on unusable input (the message names the file and line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis import compare, differences
from analysis.html_report import write_report
from analysis.intervals import LEVEL
from analysis.report import INTERVAL_NOTE, accuracy_report, intervals_of, markdown_table, percentile_row, \
    write_percentiles_csv
from analysis.runs import (MONGO_COLLECTION, MONGO_DATABASE, RESULT_PATH, STAGES, AnalysisInputError, Run,
                           add_store_stages, configured_reader, experiment_of, expand_experiments, load_run,
                           load_store_run, mongo_reader, unique_names, with_row_stages)
from common.rundir import LatencyFileError

EPILOG = """\
examples:
  python -m analysis results/experiment-1 --out results/experiment-1   # an experiment: its configurations
  python -m analysis --compare results/before results/after --out results/compare
  python -m analysis results/run-1p results/run-4p results/run-8p --out results/report
  python -m analysis results/demo --out results/demo/report --log-x
  STORE=postgres POSTGRES_HOST=db.example POSTGRES_PASSWORD=... python -m analysis --from-store --producer-id p1 --out report
  python -m analysis --from-mongo mongodb://127.0.0.1:27017 --producer-id p1 --out report
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR",
                        help="run directory holding latencies.csv (or the latencies.csv itself)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), default=None,
                        help="compare two experiment directories (or two runs) per configuration and "
                             "percentile instead: compare.csv, and whether they differ beyond their intervals")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT_DIR",
                        help="directory for the report files (created if missing)")
    parser.add_argument("--log-x", action="store_true",
                        help="logarithmic latency axis on the CDF")
    parser.add_argument("--title", default=None, help="title of the CDF figure")
    parser.add_argument("--from-store", action="store_true",
                        help="add a pseudo-run read from the store STORE names, with its settings from the "
                             "environment (latency = stored_at - sent_at)")
    parser.add_argument("--from-mongo", metavar="URI", default=None,
                        help="the same from MongoDB at URI, whatever STORE says")
    parser.add_argument("--producer-id", action="append", default=[], metavar="ID",
                        help="with --from-store or --from-mongo: only these producers (repeatable)")
    parser.add_argument("--run-name", default=None,
                        help="with --from-store or --from-mongo: name of the pseudo-run (default: the store, "
                             "e.g. postgres; mongo with --from-mongo)")
    parser.add_argument("--stages-from-store", action="store_true",
                        help="fill in stage timestamps of the run directories' images from the store STORE names")
    parser.add_argument("--mongo", metavar="URI", default=None,
                        help="the same from MongoDB at URI, whatever STORE says")
    parser.add_argument("--mongo-db", default=MONGO_DATABASE,
                        help=f"MongoDB database (default: {MONGO_DATABASE})")
    parser.add_argument("--mongo-collection", default=MONGO_COLLECTION,
                        help=f"MongoDB collection (default: {MONGO_COLLECTION})")
    return parser


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def load_runs(args) -> list[Run]:
    paths = expand_experiments([Path(p) for p in args.runs])
    runs = [load_run(p, name) for p, name in zip(paths, unique_names(paths))]
    if (args.mongo or args.stages_from_store) and runs:
        reader = (mongo_reader(args.mongo, args.mongo_db, args.mongo_collection) if args.mongo
                  else configured_reader())
        where = reader.name
        matched = add_store_stages(runs, reader)
        _note(f"{where} stage data for {matched} image(s)")
    if args.from_mongo or args.from_store:
        reader = (mongo_reader(args.from_mongo, args.mongo_db, args.mongo_collection) if args.from_mongo
                  else configured_reader())
        wanted = args.run_name or ("mongo" if args.from_mongo else reader.name.lower())
        name = wanted if wanted not in {r.name for r in runs} else f"{wanted} ({reader.name})"
        runs.append(load_store_run(reader, producer_ids=args.producer_id, name=name))
    for run in runs:
        with_row_stages(run)
    # Runs of a producer sweep read best in producer order.
    if len(runs) > 1 and all(r.producers is not None for r in runs):
        runs.sort(key=lambda r: r.producers)
    return runs


def analyse(runs: list[Run], out: Path, *, log_x: bool = False, title: str | None = None) -> dict:
    """Write every output for ``runs`` into ``out``; returns {"files": [...], "rows": [...]}."""
    from analysis import plots  # matplotlib only when figures are drawn

    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    found = [intervals_of(run) for run in runs]
    rows = [percentile_row(run, f) for run, f in zip(runs, found)]
    for run, row in zip(runs, rows):
        if row["count"] == 0:
            _note(f"run {run.name}: no image has an end-to-end latency (no results came back)")

    path = out / "percentiles.csv"
    write_percentiles_csv(rows, path)
    files.append(path)

    figures: dict[str, Path | None] = {}
    figures["cdf"] = plots.plot_cdf([(run.label, run.latencies_ms) for run in runs],
                                    out / "latency_cdf.png", log_x=log_x, title=title,
                                    bands=[f["band"] for f in found])
    files.append(figures["cdf"])
    diffs = differences.adjacent(runs)
    if diffs:
        files.append(differences.write_csv(diffs, out / "differences.csv"))

    stage_runs = [(run.label, run.stage_durations_ms()) for run in runs]
    if any(data for _, data in stage_runs):
        figures["stages"] = plots.plot_stages(stage_runs, out / "stages.png",
                                              [s for s, _, _ in STAGES], [s for s, _, _ in RESULT_PATH])
        files.append(figures["stages"])
        for (label, data), run in zip(stage_runs, runs):
            if not data:
                _note(f"run {run.name}: no stage data (no stages.csv, no MongoDB timestamps)")
    else:
        _note("no stage data (stages.csv or --mongo): stages.png skipped")

    by_producers = all(run.producers is not None for run in runs)
    points = [{"x": run.producers if by_producers else run.label,
               "throughput": row["throughput_img_s"],
               "p50": row["p50_ms"], "p95": row["p95_ms"], "p99": row["p99_ms"],
               # written by python -m experiments.experiment (the offered load, the capacity
               # its ramp measured and the knee it bracketed); absent in other runs
               "offered": run.summary.get("offered_img_s"), "capacity": run.summary.get("capacity_img_s"),
               "knee_between": run.summary.get("ramp_knee_between_img_s"),
               "result_rate": run.summary.get("result_rate_img_s")}
              for run, row in zip(runs, rows)]
    if by_producers and len({p["x"] for p in points}) < len(points):
        by_producers = False  # two runs with the same producer count: plot per run
        for p, run in zip(points, runs):
            p["x"] = run.name
    if any(p["throughput"] is not None or p["p95"] is not None for p in points):
        figures["throughput"] = plots.plot_throughput(points, out / "throughput.png", by_producers)
        files.append(figures["throughput"])
    else:
        _note("no results in any run: throughput.png skipped")

    report, figure, fig_title = accuracy_report(runs)
    if report:
        path = out / "accuracy.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        files.append(path)
        figures["confusion"] = plots.plot_confusion(figure, out / "confusion.png", title=fig_title)
        files.append(figures["confusion"])
    else:
        _note("no ground-truth labels: accuracy.json and confusion.png skipped")
    path = out / "percentiles.json"
    path.write_text(json.dumps({"level": LEVEL, "note": INTERVAL_NOTE, "rows": rows, "differences": diffs},
                               indent=2) + "\n")
    files.append(path)
    record = experiment_of(runs)
    name = runs[0].path.resolve().parent.name if record else None
    files.append(write_report(out, rows=rows, diffs=diffs, record=record, accuracy=report, figures=figures,
                              run_summaries=[{"dir": run.name, "summary": run.summary} for run in runs], name=name))
    return {"files": files, "rows": rows, "differences": diffs}


def compare_main(before: Path, after: Path, out: Path) -> int:
    """--compare: compare.csv in ``out`` and the table on stdout."""
    try:
        rows, notes = compare.compare_experiments(before, after)
        out.mkdir(parents=True, exist_ok=True)
        path = compare.write_csv(rows, out / "compare.csv")
    except (LatencyFileError, AnalysisInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(compare.markdown(rows, before, after, notes))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        if args.runs or args.from_mongo or args.from_store:
            parser.error("--compare takes its two directories alone")
        return compare_main(*args.compare, args.out)
    if args.from_mongo and args.from_store:
        parser.error("--from-store and --from-mongo: one of them")
    if args.mongo and args.stages_from_store:
        parser.error("--stages-from-store and --mongo: one of them")
    if not args.runs and not (args.from_mongo or args.from_store):
        parser.error("give at least one RUN_DIR, or --from-store (or --from-mongo URI)")
    if args.producer_id and not (args.from_mongo or args.from_store):
        parser.error("--producer-id needs --from-store or --from-mongo")
    try:
        runs = load_runs(args)
        if (args.from_mongo or args.from_store) and not runs[-1].rows:
            filters = f" for producer(s) {', '.join(args.producer_id)}" if args.producer_id else ""
            raise AnalysisInputError(f"{runs[-1].source}: no images with sent_at{filters}")
        result = analyse(runs, args.out, log_x=args.log_x, title=args.title)
    except (LatencyFileError, AnalysisInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table(result["rows"]))
    if result["differences"]:
        sys.stdout.write(differences.markdown(result["differences"]))
    print(f"\nwrote {', '.join(str(p) for p in result['files'])}", file=sys.stderr)
    return 0
