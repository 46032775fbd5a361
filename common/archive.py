"""Archives of expired images (retention, ``consumers.retention``): files a user reads back
without the store.

An archive is a JSON Lines file, ``expired-<store>-<UTC time>-<random>.jsonl``: one stored
document per line, its fields as the store holds them (``common.wire``; ``image_id`` always),
the image file's bytes in base64 under ``image``.  A writer appends a batch, flushes and
fsyncs it before the store deletes that batch, so a document is deleted only once it is on
disk here; a crash in between leaves it in both, and the next pass archives it again (the
same image id in two files; :func:`read_archive` yields both).  A crash while writing can
leave the last line incomplete: the reader skips that one line, with a warning.  A write that
fails (the archive's disk full) is cut back to the file's size before it, and raised: the
batch is not deleted from the store, and the next pass appends after whole lines.

Archives hold the images themselves: the directory is made ``0700`` and each file ``0600``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from common.wire import IMAGE, IMAGE_ID

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
PREFIX = "expired-"


class ArchiveError(ValueError):
    """An archive line that is not one document (other than an incomplete last line)."""


def encode(doc: dict) -> str:
    """One document as its archive line (without the newline)."""
    out = dict(doc)
    if isinstance(out.get(IMAGE), (bytes, bytearray, memoryview)):
        out[IMAGE] = base64.b64encode(bytes(out[IMAGE])).decode("ascii")
    return json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def decode(line: str) -> dict:
    doc = json.loads(line)
    if not isinstance(doc, dict) or not isinstance(doc.get(IMAGE_ID), str):
        raise ValueError("not a document with an image_id")
    if isinstance(doc.get(IMAGE), str):
        doc[IMAGE] = base64.b64decode(doc[IMAGE], validate=True)
    return doc


class ArchiveWriter:
    """One archive file in ``directory``, made at the first :meth:`append`."""

    def __init__(self, directory: Path | str, store: str, now: float | None = None):
        self.directory = Path(directory)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        name = "".join(c if c.isalnum() else "-" for c in store.lower())
        self.path = self.directory / f"{PREFIX}{name}-{stamp}-{uuid.uuid4().hex[:6]}{SUFFIX}"
        self.written = 0

    def append(self, docs: Iterable[dict]) -> int:
        """Write ``docs`` and make them durable (fsync) before returning how many were written."""
        lines = [encode(d) + "\n" for d in docs]
        if not lines:
            return 0
        new = not self.path.exists()
        if new:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = "".join(lines).encode("utf-8")
        # Unbuffered: nothing of a failed write is left in a buffer to be flushed later.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:  # a full archive disk: no half batch left for the next append to follow
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        if new:  # the file's name, durable in its directory
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.written += len(lines)
        return len(lines)


def read_archive(path: Path | str) -> Iterator[dict]:
    """The documents of an archive, images as bytes; an incomplete last line is skipped with
    a warning, any other bad line raises :class:`ArchiveError`."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for number, line in enumerate(lines, 1):
        try:
            yield decode(line)
        except ValueError as exc:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s: the last line is incomplete (a write cut short), skipped", path)
                return
            raise ArchiveError(f"{path}, line {number}: {exc}") from None


def archives(directory: Path | str) -> list[Path]:
    """The archive files in ``directory``, oldest name first."""
    d = Path(directory)
    return sorted(d.glob(f"{PREFIX}*{SUFFIX}")) if d.is_dir() else []
