"""``python -m consumers.retention``: expire old images from the store, archiving them first.

  run                   once: delete the images older than STORE_RETENTION_DAYS (--days),
                        archived first to STORE_ARCHIVE_DIR (--archive-dir) when set;
                        --dry-run counts them and changes nothing
  archive list DIR      one line per archive file: images, oldest and newest, size
  archive read FILE     one line per archived image (id, producer, seq, label, prediction,
                        stored); --images DIR writes each image file there, --json prints
                        the documents

The DB consumer applies the same rule every STORE_RETENTION_INTERVAL_S while
STORE_RETENTION_DAYS > 0 (:func:`start`).  An image's age is its ``stored_at``, else its
``prediction_stored_at`` (common.store.AGE_FIELDS); the store adapters find and delete the
old documents (``StoreReader.expiring`` / ``delete``), a batch of STORE_RETENTION_BATCH at a
time, each batch made durable in the archive (common.archive) before it is deleted.

Exit status: 0 done, 1 the store could not be reached or an archive not read, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.archive import ArchiveError, ArchiveWriter, archives, encode, read_archive
from common.log import setup_logging
from common.settings import RetentionSettings, StoreSettings, describe, with_flags
from common.store import AGE_FIELDS, DOCUMENT_FIELDS, IMAGE, IMAGE_ID, StoreError, StoreReader, open_reader, open_sink
from common.wire import FILE_SUFFIXES, FORMAT, LABEL, PNG, PREDICTION, PRODUCER_ID, SEQ

log = logging.getLogger("consumers.retention")

DAY_S = 86_400.0


@dataclass
class Expired:
    """One pass: how many documents were deleted, archived, and into which file."""

    cutoff: float
    deleted: int = 0
    archived: int = 0
    archive: Path | None = None
    kept: int = 0  # found old but not deleted (written meanwhile), or a dry run's count


def expire(reader: StoreReader, settings: RetentionSettings, now: float | None = None,
           dry_run: bool = False) -> Expired:
    """Delete (archive first, with STORE_ARCHIVE_DIR) every document older than the cutoff,
    a batch at a time.  ``now`` is the clock (tests pass their own)."""
    now = time.time() if now is None else now
    out = Expired(cutoff=now - settings.store_retention_days * DAY_S)
    if settings.store_retention_days <= 0:
        return out
    writer = ArchiveWriter(settings.store_archive_dir, reader.name, now) if settings.store_archive_dir else None
    fields = DOCUMENT_FIELDS if writer else ()
    if dry_run:
        out.kept = len(reader.expiring(out.cutoff, 2**31 - 1, ()))
        return out
    while True:
        docs = reader.expiring(out.cutoff, settings.store_retention_batch, fields)
        if not docs:
            break
        if writer is not None:
            out.archived += writer.append(docs)
            out.archive = writer.path
        deleted = reader.delete([d[IMAGE_ID] for d in docs], out.cutoff)
        out.deleted += deleted
        if deleted < len(docs):  # written meanwhile, or a conflict: the next pass tries again
            out.kept += len(docs) - deleted
            break
    return out


def describe_pass(result: Expired) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.cutoff))
    text = f"deleted {result.deleted} image(s) first stored before {when}"
    if result.archive is not None:
        text += f", archived first to {result.archive}"
    if result.kept:
        text += f"; {result.kept} kept for the next pass (written meanwhile)"
    return text


def every(reader: StoreReader, settings: RetentionSettings, stop: threading.Event) -> None:
    """Apply the retention every STORE_RETENTION_INTERVAL_S until ``stop``; a store that
    cannot be reached is tried again at the next interval."""
    while not stop.is_set():
        try:
            result = expire(reader, settings)
            if result.deleted or result.kept:
                log.info("retention (%g days, %s): %s", settings.store_retention_days, reader.where,
                         describe_pass(result))
        except (StoreError, OSError) as exc:
            log.warning("retention of %s failed (%s); next try in %.0f s", reader.where, exc,
                        settings.store_retention_interval_s)
        stop.wait(settings.store_retention_interval_s)
    reader.close()


def start(settings: RetentionSettings, open_store_reader, stop: threading.Event) -> threading.Thread | None:
    """The DB consumer's retention thread (None with STORE_RETENTION_DAYS=0); ``open_store_reader()``
    gives it a reader of its own."""
    if settings.store_retention_days <= 0:
        return None
    thread = threading.Thread(target=every, args=(open_store_reader(), settings, stop), name="retention",
                              daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- archives, read back

def _iso(value) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value)) if isinstance(value, (int, float)) else "-"


def list_archives(directory: Path) -> int:
    files = archives(directory)
    if not files:
        print(f"no archive in {directory}")
        return 0
    for path in files:
        docs = list(read_archive(path))
        ages = [next((d[f] for f in AGE_FIELDS if isinstance(d.get(f), (int, float))), None) for d in docs]
        ages = [a for a in ages if a is not None]
        print(f"{path.name}  {len(docs)} images  {_iso(min(ages)) if ages else '-'} .. "
              f"{_iso(max(ages)) if ages else '-'}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


def read_one(path: Path, images: Path | None, as_json: bool) -> int:
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)
    for doc in read_archive(path):
        if images is not None and isinstance(doc.get(IMAGE), bytes):
            suffix = FILE_SUFFIXES.get(doc.get(FORMAT) or PNG, (".bin",))[0]
            (images / f"{doc[IMAGE_ID]}{suffix}").write_bytes(doc[IMAGE])
        if as_json:
            print(encode(doc))
        else:
            print(f"{doc[IMAGE_ID]}  {doc.get(PRODUCER_ID, '-')}  seq {doc.get(SEQ, '-')}  label {doc.get(LABEL) or '-'}"
                  f"  prediction {doc.get(PREDICTION) or '-'}  stored {_iso(doc.get(AGE_FIELDS[0]))}"
                  f"  {len(doc.get(IMAGE) or b'')} bytes")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m consumers.retention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="expire old images once")
    run.add_argument("--days", type=float, help="STORE_RETENTION_DAYS")
    run.add_argument("--archive-dir", help="STORE_ARCHIVE_DIR")
    run.add_argument("--dry-run", action="store_true", help="count the images that would expire")
    archive = sub.add_parser("archive", help="read archives back")
    what = archive.add_subparsers(dest="action", required=True)
    listing = what.add_parser("list", help="the archive files of a directory")
    listing.add_argument("directory", type=Path)
    read = what.add_parser("read", help="the images of one archive file")
    read.add_argument("file", type=Path)
    read.add_argument("--images", type=Path, help="write each image file into this directory")
    read.add_argument("--json", action="store_true", help="print the documents (image in base64)")
    return p


def main(argv=None) -> int:
    setup_logging()
    p = make_parser()
    args = p.parse_args(argv)
    try:
        if args.command == "archive":
            return list_archives(args.directory) if args.action == "list" else read_one(args.file, args.images,
                                                                                        args.json)
    except (OSError, ArchiveError) as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 1
    settings = with_flags(RetentionSettings, p, store_retention_days=args.days,
                          store_archive_dir=args.archive_dir)
    store = with_flags(StoreSettings, p)
    log.info("%s", describe(store, settings))
    if settings.store_retention_days <= 0:
        print("STORE_RETENTION_DAYS is 0: images are kept forever; nothing to do")
        return 0
    sink = open_sink(store=store.store)
    reader = open_reader(store=store.store)
    try:
        try:
            sink.prepare()  # the index or view retention reads (idempotent)
        except Exception as exc:  # any client's error: the store is not up, or refuses
            raise StoreError(f"{sink.name}: {exc}") from None
        result = expire(reader, settings, dry_run=args.dry_run)
    except (StoreError, OSError) as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 1
    finally:
        sink.close()
        reader.close()
    if args.dry_run:
        print(f"{result.kept} image(s) first stored before {_iso(result.cutoff)} would expire")
    else:
        print(describe_pass(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
