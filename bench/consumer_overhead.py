"""``python -m bench.consumer_overhead``: the consumers' own CPU per record, without Kafka,
the service or the store.

Both consumers run over in-memory Kafka fakes: the DB writer's sink is a MongoDB collection
whose ``bulk_write`` returns at once (the UpdateOne operations are still built), the
inference consumer's ``/v1/predict`` answers at once.  What is left is the consumers' own
Python: parsing, batching, building results and upserts, the loop, dead-letter checks,
commits.  The CPU time of the process (``time.process_time``) per record is printed, best
of ``--rounds``.

Run it from the root of each checkout to compare two versions of the code side by side on
one machine (the module uses whichever ``consumers`` package is first on ``sys.path``):

    (cd ../baseline && python -m bench.consumer_overhead) ; python -m bench.consumer_overhead

A benchmark, not a test: it says nothing about the broker's or the store's cost.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

import numpy as np
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from common.settings import InferenceClientSettings, KafkaSettings

IMAGES, RESULTS, DLQ = "b-images", "b-results", "b-dlq"


class Consumer:
    """Hands out ``records`` in polls of ``max_records``; sets ``stop`` once drained."""

    def __init__(self, records: list, stop: threading.Event, max_records: int):
        self.records, self.stop, self.max_records, self.pos = records, stop, max_records, 0
        self.tps = {TopicPartition(r.topic, r.partition) for r in records}

    def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
        if self.pos >= len(self.records):
            self.stop.set()
            return {}
        n = min(max_records or self.max_records, self.max_records)
        batch, self.pos = self.records[self.pos:self.pos + n], self.pos + n
        out: dict = {}
        for r in batch:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def assignment(self):
        return set(self.tps)

    def commit(self, offsets=None, timeout_ms=None):
        pass

    def seek(self, tp, offset):
        pass

    def pause(self, *tps):
        pass

    def resume(self, *tps):
        pass

    def paused(self):
        return set()

    def position(self, tp, timeout_ms=None):
        return 0

    def highwater(self, tp):
        return 0

    def close(self, autocommit=True, timeout_ms=None):
        pass


class Future:
    def failed(self):
        return False

    def get(self, timeout=None):
        return None


class Producer:
    def send(self, topic, key=None, value=None, headers=None, partition=None):
        return Future()

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


class Collection:
    def create_index(self, *a, **k):
        pass

    def bulk_write(self, ops, ordered=True):
        return None


def _record(topic: str, offset: int, value: bytes, headers=()) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, -1, offset, int(time.time() * 1000), 0, None, value, list(headers), None, -1,
                          len(value), -1)


def image_records(n: int) -> list:
    """Schema-2 image records (the default producer's) and their result records."""
    from PIL import Image
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB").save(buf, format="PNG")
    png = buf.getvalue()
    images, results = [], []
    for i in range(n):
        image_id = str(uuid.uuid4())
        headers = [("schema", b"2"), ("seq", str(i).encode()), ("sent_at", repr(time.time()).encode()),
                   ("image_id", image_id.encode()), ("device_id", b"bench-cam"), ("producer_id", b"bench"),
                   ("label", b"cat"), ("dataset", b"cifar10"), ("format", b"png")]
        images.append(_record(IMAGES, i, png, headers))
        result = {"schema": 1, "image_id": image_id, "device_id": "bench-cam", "producer_id": "bench", "seq": i,
                  "sent_at": 1.0, "label": "cat", "prediction": "cat", "confidence": 0.5, "model": "m",
                  "received_at": 1.0, "inferred_at": 1.0, "published_at": 1.0}
        results.append(_record(RESULTS, i, json.dumps(result).encode()))
    return images, results


def kafka() -> KafkaSettings:
    return KafkaSettings(images_topic=IMAGES, results_topic=RESULTS, dlq_topic=DLQ)


def db_writer_cpu(images: list, results: list, max_records: int = 500) -> float:
    """CPU seconds of the DB writer over the images and results, interleaved as polled."""
    from consumers import db

    records = [r for pair in zip(images, results) for r in pair]
    stop = threading.Event()
    consumer = Consumer(records, stop, max_records)
    db.make_consumer = lambda *a, **k: consumer
    db.make_producer = lambda *a, **k: Producer()
    start = time.process_time()
    if hasattr(db, "make_loop"):
        from common.store.mongodb import MongoSink

        _writer, loop = db.make_loop(kafka(), MongoSink(Collection()), stop, max_records)
        loop.run()
    else:  # a checkout whose DB writer holds its own collection
        db.connect = lambda *a, **k: type("Client", (), {"close": lambda self: None})()
        db.images_collection = lambda *a, **k: Collection()
        from common.settings import MongoSettings

        db.DbWriter(kafka(), MongoSettings(), stop, max_records).run()
    return time.process_time() - start


def inference_cpu(images: list, batch: int = 64) -> float:
    """CPU seconds of the inference consumer over the images, the service answering at once."""
    from consumers import inference

    stop = threading.Event()
    consumer = Consumer(images, stop, batch)
    inference.make_consumer = lambda *a, **k: consumer
    inference.make_producer = lambda *a, **k: Producer()

    def predict_files(self, items):
        return {"model": "m", "predictions": [
            {"image_id": image_id, "label": "cat", "confidence": 0.5, "received_at": 1.0, "inferred_at": 1.0,
             "inference_ms": 1.0} for image_id, _data, _type in items], "batch_size": len(items)}

    inference.InferenceClient.predict_files = predict_files
    cfg = InferenceClientSettings(inference_url="http://bench.invalid", predict_batch_images=batch,
                                  predict_batch_wait_ms=0)
    start = time.process_time()
    if hasattr(inference, "make_loop"):
        _handler, loop = inference.make_loop(kafka(), cfg, stop)
        loop.run()
    else:
        inference.InferenceConsumer(kafka(), cfg, stop).run()
    return time.process_time() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.consumer_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20_000, help="images (and as many results) per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the best is kept (default 3)")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    images, results = image_records(args.images)
    db_writer_cpu(images[:100], results[:100])  # imports and first calls, not measured
    inference_cpu(images[:100])
    db_us, inf_us = [], []
    for _ in range(args.rounds):
        db_us.append(db_writer_cpu(images, results) / (2 * args.images) * 1e6)
        inf_us.append(inference_cpu(images) / args.images * 1e6)
    print(json.dumps({"images": args.images, "rounds": args.rounds,
                      "db_writer_cpu_us_per_record": [round(v, 2) for v in db_us],
                      "inference_consumer_cpu_us_per_record": [round(v, 2) for v in inf_us],
                      "best": {"db_writer": round(min(db_us), 2), "inference_consumer": round(min(inf_us), 2)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
