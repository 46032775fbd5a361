"""``python -m bench.db_write_cost --mongo URI``: what one upsert per image saves.

The DB consumer merges an image and its result polled together into one upsert
(consumers.db.merged).  This writes N (image, result) pairs both ways, in
interleaved rounds, bulk_write by 500 like the consumer, and prints the MongoDB wall
time per stored image (image + prediction) and the ratio.  A benchmark, not a test;
against the local stack: ``make up`` then ``--mongo "$MONGO_URI"`` from .run/stack.env.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from pymongo import MongoClient

from common.store import image_upsert, result_upsert
from common.store.mongodb import update_of
from consumers.db import merged as merge


def pairs(n: int) -> list:
    png = os.urandom(2200)  # about a 32x32 PNG
    parts = []
    for i in range(n):
        image = {"image_id": str(uuid.uuid4()), "schema": 1, "device_id": "bench-cam", "producer_id": "bench",
                 "seq": i, "sent_at": 1.0, "label": "cat", "dataset": "cifar10", "format": "png"}
        result = {**image, "prediction": "cat", "confidence": 0.5, "model": "m", "received_at": 1.0,
                  "inferred_at": 1.0, "published_at": 1.0}
        parts += [(None, image_upsert(image, png, time.time())), (None, result_upsert(result, time.time()))]
    return parts


def separate(parts) -> list:
    return [update_of(upsert) for _, upsert in parts]


def merged(parts) -> list:
    return [update_of(upsert) for _, upsert in merge(parts)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.db_write_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mongo", required=True, help="MongoDB URI (a scratch database is used)")
    p.add_argument("--images", type=int, default=1500, help="pairs per round (default 1500)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each, interleaved (default 3)")
    args = p.parse_args(argv)
    client = MongoClient(args.mongo, serverSelectionTimeoutMS=10_000)
    col = client.iot_bench.db_write_cost
    col.drop()
    ms: dict[str, list[float]] = {"separate": [], "merged": []}
    for r in range(args.rounds):
        order = [("separate", separate), ("merged", merged)]
        for name, build in order if r % 2 == 0 else order[::-1]:
            ops = build(pairs(args.images))
            t0 = time.perf_counter()
            for k in range(0, len(ops), 500):
                col.bulk_write(ops[k:k + 500], ordered=False)
            ms[name].append((time.perf_counter() - t0) * 1000 / args.images)
    col.drop()
    client.close()
    for name, values in ms.items():
        print(f"{name:9s} {len(values)} rounds, ms per stored image: "
              + ", ".join(f"{v:.3f}" for v in values) + f"  (median {statistics.median(values):.3f})")
    print(f"two upserts / one upsert: {statistics.median(ms['separate']) / statistics.median(ms['merged']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
