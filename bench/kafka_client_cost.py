"""CPU per image of a producer's send path with kafka-python and with librdkafka, side by side.

    python -m bench.kafka_client_cost [--rate 80] [--images 1200] [--rounds 2]

Starts a local stack of its own (broker, MongoDB, consumers; no Prometheus) and, for each
round, runs the same loop in a fresh process per client: encode a 32 px PNG, build the
schema-2 record (common.schema), hand it to the client at ``--rate`` (kafka-python through
common.kafka_io.make_producer, as the producers do; librdkafka with acks=all, the same
linger and murmur2 keys), wait for every acknowledgement.  Prints the
loop's CPU per image and the whole process's (start included), and the same loop with no
client at all.  librdkafka is the optional ``confluent-kafka`` package: ``pip install
confluent-kafka`` (skipped with a note when absent).  docs/PERFORMANCE.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLIENTS = ("kafka-python", "librdkafka", "none")


def _loop(client: str, bootstrap: str, topic: str, rate: float, count: int, linger_ms: int) -> dict:
    """One measured process (``--child``): the send loop with ``client``."""
    t0 = time.process_time()
    import numpy as np

    from common.schema import encode_png, image_record, make_image_message

    acked = [0]
    if client == "kafka-python":
        from common.kafka_io import make_producer
        from common.settings import KafkaSettings

        # The producers' own client (common.kafka_io): the same acks, batch size and retries.
        producer = make_producer(KafkaSettings(kafka_bootstrap_servers=bootstrap, kafka_linger_ms=linger_ms))

        def ok(_metadata):
            acked[0] += 1

        def send(key, value, headers):
            producer.send(topic, key=key, value=value, headers=headers).add_callback(ok)

        def finish():
            producer.flush(60)
            producer.close()
    elif client == "librdkafka":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
                             "partitioner": "murmur2_random"})

        def report(err, _msg):
            if err is None:
                acked[0] += 1

        def send(key, value, headers):
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report)
            producer.poll(0)

        def finish():
            producer.flush(60)
    else:
        def send(key, value, headers):
            acked[0] += 1

        def finish():
            pass
    start_cpu = time.process_time() - t0
    images = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    window = linger_ms / 1000  # the producer's pacing (producer/camera.py)
    c0, start = time.process_time(), time.time()
    for seq in range(count):
        delay = start + seq / rate - time.time()
        if delay > window:
            time.sleep(delay)
        png = encode_png(images[seq % len(images)])
        msg = make_image_message(image=png, format="png", device_id=f"cost-cam{seq % 4:02d}", producer_id="cost",
                                 seq=seq, label=None, dataset="synthetic", schema=2)
        msg["sent_at"] = time.time()
        value, headers = image_record(msg, png)
        send(msg["device_id"].encode(), value, headers)
    finish()
    return {"client": client, "acked": acked[0], "start_core_s": round(start_cpu, 3),
            "loop_core_ms_per_img": round((time.process_time() - c0) * 1000 / count, 3)}


def measure(client: str, bootstrap: str, args) -> dict | None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "bench.kafka_client_cost", "--child", client,
                           "--bootstrap", bootstrap, "--rate", str(args.rate), "--images", str(args.images),
                           "--linger-ms", str(args.linger_ms)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        log.warning("%s: %s", client, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    whole = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out["process_core_ms_per_img"] = round(whole * 1000 / args.images, 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kafka_client_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=80.0, help="images/s (the bench's per-producer maximum)")
    p.add_argument("--images", type=int, default=1200, help="images per measured process")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every client")
    p.add_argument("--linger-ms", type=int, default=20)
    p.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_loop(args.child, args.bootstrap, "images", args.rate, args.images, args.linger_ms)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from stack.control import LocalStack

    clients = list(CLIENTS)
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        log.warning("confluent-kafka is not installed (pip install confluent-kafka): librdkafka skipped")
        clients.remove("librdkafka")
    rows = []
    with tempfile.TemporaryDirectory(prefix="client-cost-") as tmp, \
            LocalStack(Path(tmp) / "stack", {"STACK_PROMETHEUS": "0", "STACK_DASHBOARD": "0"},
                       name="client-cost") as stack:
        for rnd in range(args.rounds):
            for client in clients:
                row = measure(client, stack.env["KAFKA_BOOTSTRAP_SERVERS"], args)
                if row:
                    rows.append(row)
                    log.info("round %d %-12s loop %.2f core-ms/img, whole process %.2f (start %.2f core-s), "
                             "acknowledged %d/%d", rnd + 1, client, row["loop_core_ms_per_img"],
                             row["process_core_ms_per_img"], row["start_core_s"], row["acked"], args.images)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
