"""``python -m consumers.dlq``: list, show and replay the dead letters of ``iot-dlq``.

  list                      one line per dead letter: offset, time, source, size, reason
                            (--reason TEXT, --source-topic TOPIC, --since TIME; --json)
  show OFFSET               one dead letter: why, where from, key, headers, value (text or hex)
  replay OFFSET... | --reason TEXT | --all
                            send the original records back to their source topic, byte for
                            byte (key, value, headers; the dlq.* headers removed, a replay.of
                            header added); --dry-run says what it would do

OFFSET is the dead letter's offset in the DLQ topic (``PARTITION:OFFSET`` if it has several
partitions).  TIME is unix seconds, an ISO 8601 date/time (UTC unless it says otherwise) or
an age such as 30m, 6h, 2d.

Replay is idempotent: an image already stored with its prediction in the store STORE names
(MongoDB, PostgreSQL or CouchDB) is skipped (looked up by the image id of the original value,
where it parses), and each replayed dead letter is recorded in that store (MongoDB's
MONGO_DLQ_REPLAYS_COLLECTION, PostgreSQL's iot_dlq_replays, CouchDB's
COUCHDB_DLQ_REPLAYS_DATABASE), so a second replay skips it unless --force.  Settings come
from the environment (KAFKA_*, DLQ_TOPIC, STORE and the store's MONGO_*, POSTGRES_* or
COUCHDB_*, see common/settings.py); flags override them.

Exit status: 0 on success, 1 when a dead letter was not found or a replay failed (or Kafka or
the store cannot be reached), 2 on a usage error.

The record format is common/deadletter.py; reading the topic is consumers/dlq_entries.py,
replaying consumers/replay.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import sys

from common.log import setup_logging
from common.settings import DlqToolSettings, KafkaSettings, describe, with_flags
from common.store import StoreReader
from common.store.opening import configured, open_configured
from consumers.dlq_entries import (Entry, ToolError, iso, one_line, parse_ref, parse_since, read_dlq,  # noqa: F401
                                   select, size_text)
from consumers.replay import Replayer

log = logging.getLogger("consumers.dlq")


def summary(e: Entry) -> dict:
    if e.dead is None:
        return {"dlq_partition": e.partition, "offset": e.offset, "error": e.error}
    d = e.dead
    return {"dlq_partition": e.partition, "offset": e.offset, "failed_at": d.failed_at,
            "source_topic": d.source_topic, "source_partition": d.source_partition,
            "source_offset": d.source_offset, "size": d.value_size,
            "key_size": None if d.key is None else len(d.key), "headers": len(d.headers),
            "reason": d.reason, "image_id": d.image_id(), "schema": d.schema, "replayable": d.replayable,
            **({} if d.kept else {"not_kept": d.why_not_kept})}


def print_table(entries: list[Entry]) -> None:
    rows = [("OFFSET", "FAILED AT (UTC)", "SOURCE", "SIZE", "REASON")]
    for e in entries:
        if e.dead is None:
            rows.append((e.ref, "-", "-", "-", f"(not a dead letter: {e.error})"))
        else:
            rows.append((e.ref, iso(e.dead.failed_at), e.dead.source, size_text(e.dead),
                         one_line(e.dead.reason, 200)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}")
    if any(e.dead is not None and not e.dead.kept for e in entries):
        print("* the original bytes are not in the DLQ (see 'show'): not replayable")


def preview(data: bytes | None, limit: int) -> str:
    """Text when ``data`` is printable UTF-8, else a hex dump; at most ``limit`` bytes."""
    if data is None:
        return "(null)"
    if not data:
        return "(empty)"
    head = data[:limit]
    more = f"\n  ... {len(data) - limit} more bytes" if len(data) > limit else ""
    try:
        text = head.decode("utf-8")
        if not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
            return f"(text, {len(data)} bytes) {text}{more}"
    except UnicodeDecodeError:
        pass
    lines = [f"(binary, {len(data)} bytes)"]
    for i in range(0, len(head), 16):
        chunk = head[i:i + 16]
        lines.append(f"  {i:08x}  {chunk.hex(' '):<47}  "
                     + "".join(chr(b) if 32 <= b < 127 else "." for b in chunk))
    return "\n".join(lines) + more


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def show(e: Entry, limit: int, as_json: bool) -> None:
    d = e.dead
    if as_json:
        out = summary(e)
        if d is not None:
            out.update(source_timestamp_ms=d.source_timestamp_ms, key_b64=b64(d.key), value_b64=b64(d.value),
                       headers_b64=[[k, b64(v)] for k, v in d.headers])
        print(json.dumps(out, indent=2))
        return
    if d is None:
        print(f"offset {e.ref}: not a dead letter ({e.error})")
        return
    print(f"dead letter   {d.dlq_topic} offset {e.ref}  (schema {d.schema})")
    print(f"reason        {d.reason}")
    print(f"source        {d.source}")
    print(f"failed at     {iso(d.failed_at)} UTC ({d.failed_at})")
    if d.source_timestamp_ms is not None:
        print(f"produced at   {iso(d.source_timestamp_ms / 1000)} UTC")
    if d.image_id():
        print(f"image id      {d.image_id()}")
    if not d.kept:
        print(f"not kept      {d.why_not_kept}")
        print(f"value size    {size_text(d)}")
        return
    print(f"key           {preview(d.key, limit)}")
    print(f"headers       {len(d.headers)}")
    for k, v in d.headers:
        text = "(null)" if v is None else v.decode("utf-8", "backslashreplace")
        print(f"  {k!r}: {one_line(text, 120)}" if v is None or text.isprintable() else f"  {k!r}: 0x{v[:64].hex()}")
    print(f"value         {preview(d.value, limit)}")


# ---------------------------------------------------------------- command line

def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap-servers", help="Kafka brokers (default KAFKA_BOOTSTRAP_SERVERS)")
    common.add_argument("--dlq-topic", help="the dead-letter topic (default DLQ_TOPIC, iot-dlq)")
    common.add_argument("--idle-ms", type=int,
                        help="stop reading after this long without a record (default DLQ_READ_IDLE_MS)")
    common.add_argument("--json", action="store_true", help="JSON on stdout instead of text")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--reason", help="dead letters whose reason contains this text (any case)")
    filters.add_argument("--source-topic", help="dead letters from this topic")
    filters.add_argument("--since", help="dead letters from this time on (unix s, ISO 8601, or 30m/6h/2d)")

    p = argparse.ArgumentParser(prog="python -m consumers.dlq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,show,replay}")
    sub.add_parser("list", parents=[common, filters], help="one line per dead letter")
    s = sub.add_parser("show", parents=[common], help="one dead letter in full")
    s.add_argument("ref", metavar="OFFSET", help="OFFSET or PARTITION:OFFSET in the DLQ topic")
    s.add_argument("--bytes", type=int, default=512, help="preview length of key and value (default 512)")
    s.add_argument("--value-out", metavar="FILE", help="write the original value, as is, to FILE")
    r = sub.add_parser("replay", parents=[common, filters], help="send dead letters back to their topic")
    r.add_argument("refs", nargs="*", metavar="OFFSET", help="the dead letters to replay")
    r.add_argument("--all", action="store_true", help="every dead letter (that passes the filters)")
    r.add_argument("--mongo-uri", help="MongoDB, with STORE=mongodb (default MONGO_URI)")
    r.add_argument("--dry-run", action="store_true", help="say what would be replayed, send nothing")
    r.add_argument("--force", action="store_true",
                   help="replay dead letters already replayed (images already stored are still skipped)")
    p.set_defaults(subparsers={"list": sub.choices["list"], "show": s, "replay": r})
    return p


def main(argv=None) -> int:
    setup_logging()
    parser = make_parser()
    args = parser.parse_args(argv)
    sub = args.subparsers[args.command]  # errors come with the subcommand's usage
    kafka = with_flags(KafkaSettings, sub, kafka_bootstrap_servers=args.bootstrap_servers,
                       dlq_topic=args.dlq_topic)
    tool = with_flags(DlqToolSettings, sub, dlq_read_idle_ms=args.idle_ms)
    since = None
    if getattr(args, "since", None) is not None:
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            sub.error(str(exc))
    try:
        if args.command == "list":
            log.info("%s", describe(kafka, tool))
            return cmd_list(args, kafka, tool, since)
        if args.command == "show":
            try:
                ref = parse_ref(args.ref)
            except ValueError as exc:
                sub.error(str(exc))
            if args.bytes < 1:
                sub.error("--bytes must be at least 1")
            log.info("%s", describe(kafka, tool))
            return cmd_show(args, kafka, tool, ref)
        try:
            refs = [parse_ref(r) for r in args.refs]
        except ValueError as exc:
            sub.error(str(exc))
        if sum((bool(refs), args.reason is not None, args.all)) != 1:
            sub.error("say which dead letters: OFFSET..., --reason TEXT or --all (one of them)")
        store, backend = configured(sub, mongo_uri=args.mongo_uri)
        if args.mongo_uri is not None and store.store != "mongodb":
            sub.error(f"--mongo-uri is MongoDB's, and STORE is {store.store}: set that store's variables instead")
        log.info("%s", describe(kafka, store, backend, tool))
        return cmd_replay(args, kafka, open_configured(store, backend), tool, refs, since)
    except ToolError as exc:
        log.error("%s", exc)
        return 1


def cmd_list(args, kafka: KafkaSettings, tool: DlqToolSettings, since: float | None) -> int:
    entries = select(read_dlq(kafka, tool.dlq_read_idle_ms), reason=args.reason,
                     source_topic=args.source_topic, since=since)
    if args.json:
        print(json.dumps([summary(e) for e in entries], indent=2))
    else:
        print_table(entries)
    return 0


def cmd_show(args, kafka: KafkaSettings, tool: DlqToolSettings, ref: tuple[int, int]) -> int:
    found = read_dlq(kafka, tool.dlq_read_idle_ms, at=ref)
    if not found:
        raise ToolError(f"no record at offset {args.ref} of {kafka.dlq_topic}")
    e = found[0]
    if args.value_out:
        if e.dead is None or not e.dead.kept or e.dead.value is None:
            raise ToolError(f"offset {args.ref} holds no original value to write")
        with open(args.value_out, "wb") as f:
            f.write(e.dead.value)
    show(e, args.bytes, args.json)
    return 0


def cmd_replay(args, kafka: KafkaSettings, reader: StoreReader, tool: DlqToolSettings,
               refs: list[tuple[int, int]], since: float | None) -> int:
    entries = read_dlq(kafka, tool.dlq_read_idle_ms)
    missing = []
    if refs:
        by_ref = {(e.partition, e.offset): e for e in entries}
        missing = [f"{p}:{o}" if p else str(o) for p, o in refs if (p, o) not in by_ref]
        entries = [by_ref[r] for r in dict.fromkeys(refs) if r in by_ref]
    entries = select(entries, reason=args.reason, source_topic=args.source_topic, since=since)
    replayer = Replayer(kafka, reader)
    try:
        outcomes = replayer.run(entries, dry_run=args.dry_run, force=args.force)
    finally:
        replayer.close()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("replayed", "would replay", "skipped", "failed")}
    if args.json:
        print(json.dumps({"outcomes": [o.as_dict() for o in outcomes], "counts": counts,
                          "missing": missing}, indent=2))
    else:
        for o in outcomes:
            print(f"{o.entry.ref:>8}  {o.status:<12}  {one_line(o.detail, 200)}")
        print(", ".join(f"{n} {s}" for s, n in counts.items()) + (f"; not found: {', '.join(missing)}"
                                                                  if missing else ""))
    for m in missing:
        log.error("no record at offset %s of %s", m, kafka.dlq_topic)
    return 1 if missing or counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
