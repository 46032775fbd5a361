"""``python -m producer``: one producer process playing several cameras.

Writes ``latencies.csv`` and ``stages.csv`` into ``--out`` and exits non-zero if any
image's result did not come back.  Settings come from the environment (see
common/settings.py); flags override them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from common import dataset as datasets
from common.log import setup_logging
from common.metrics import serve
from common.settings import DatasetSettings, KafkaSettings, MetricsSettings, ProducerSettings, describe, with_flags
from producer.camera import ProducerRun, new_producer_id, run_cameras, write_run_files
from producer.metrics import ProducerMetrics

log = logging.getLogger("producer")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m producer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, help="images to send (default 300)")
    p.add_argument("--rate", type=float, help="images per second (default 20)")
    p.add_argument("--duration", type=float, help="seconds to send for; sets count = duration x rate")
    p.add_argument("--devices", type=int, help="simulated cameras (Kafka keys), default 4")
    p.add_argument("--producer-id", help="id stamped on every message (default: random)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "synthetic", "folder"])
    p.add_argument("--dataset-source", help="directory, tarball or URL of the official archive; "
                                            "for --dataset folder a directory of JPEG/PNG files")
    p.add_argument("--image-schema", type=int, choices=[1, 2],
                   help="image message schema: 2 (default) raw image + headers, 1 the JSON message")
    p.add_argument("--split", choices=["test", "train"])
    p.add_argument("--result-timeout", type=float, help="seconds to wait for the last results")
    p.add_argument("--out", type=Path, default=Path("."), help="directory for latencies.csv")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--progress-file", type=Path, help="JSON progress for a supervising process")
    return p


def main(argv=None) -> int:
    setup_logging()
    parser = make_parser()
    args = parser.parse_args(argv)
    kafka, metrics = with_flags(KafkaSettings, parser), with_flags(MetricsSettings, parser)
    data = with_flags(DatasetSettings, parser, dataset=args.dataset, dataset_source=args.dataset_source,
                      dataset_split=args.split)
    prod = with_flags(ProducerSettings, parser, count=args.count, rate=args.rate, duration=args.duration,
                      devices=args.devices, producer_id=args.producer_id,
                      result_timeout_s=args.result_timeout, image_schema=args.image_schema)
    if prod.duration is not None:
        prod = with_flags(ProducerSettings, parser, **{**prod.model_dump(),
                                                       "count": math.ceil(prod.duration * prod.rate)})
    producer_id = prod.producer_id or new_producer_id()
    log.info("%s", describe(kafka, data, prod, metrics))
    if data.dataset == "folder" and prod.image_schema != 2:
        log.error("DATASET=folder sends the files as they are, which needs IMAGE_SCHEMA=2 "
                  "(schema 1 carries 32x32 PNG only)")
        return 2
    try:
        ds = datasets.load(data.dataset, data.dataset_source, data.dataset_split,
                           limit=prod.count if data.dataset == "synthetic" else None,
                           max_bytes=kafka.max_message_bytes)
    except datasets.DatasetUnavailable as exc:
        log.error("%s", exc)
        return 2
    run = ProducerRun(producer_id, ProducerMetrics(metrics.metrics_enabled))
    server = serve(metrics, "producer")
    if server is not None:  # a batch job: let Prometheus see its counters at zero first
        server.wait_first_scrape(metrics.metrics_hold_s)
    try:
        run_cameras(run, kafka=kafka, dataset=ds, count=prod.count, rate=prod.rate, devices=prod.devices,
                    result_timeout_s=prod.result_timeout_s, progress=not args.no_progress,
                    progress_file=args.progress_file, image_schema=prod.image_schema)
    finally:  # whatever happened, the images attempted are on record
        write_run_files(run, args.out)
        if server is not None:  # a batch job: let one last scrape read the final counts
            server.hold(metrics.metrics_hold_s)
            server.close()
    counts = run.counts()
    missing = prod.count - run.results
    log.info("%s: attempted %d, acknowledged %d, failed %d, resent %d, results %d, missing %d -> %s",
             producer_id, counts["attempted"], counts["acknowledged"], counts["failed"], counts["resent"],
             run.results, missing, args.out / "latencies.csv")
    return 0 if missing == 0 and run.send_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
