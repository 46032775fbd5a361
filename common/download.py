"""Downloads into a cache, verified: the one helper for datasets and model weights.

A download goes to ``<dest>.part`` and is renamed to ``dest`` only when complete and
its md5 matches, so an interrupted or corrupt download never looks cached; on any
failure the partial file is removed and :class:`DownloadError` (an ``OSError``) says
why.  Every socket operation is bounded by ``timeout_s``.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)


class DownloadError(OSError):
    """The file could not be had: network failure, HTTP error or checksum mismatch."""


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def fetch(url: str, dest: Path, *, md5: str | None = None, timeout_s: float = 30.0,
          progress: bool = True) -> Path:
    """``dest`` if it is already there (with the right md5 when one is given), else
    downloaded from ``url``, with a progress bar unless ``progress`` is false."""
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_digest(dest) == md5):
        log.info("using cached %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".part")
    log.info("downloading %s -> %s (timeout %.1f s)", url, dest, timeout_s)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, open(partial, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        if md5 and file_digest(partial) != md5:
            raise DownloadError(f"{url}: md5 mismatch (expected {md5}); download again")
    except OSError as exc:  # URLError, HTTPError, timeouts and DNS failures are OSErrors
        partial.unlink(missing_ok=True)
        raise exc if isinstance(exc, DownloadError) else DownloadError(f"{url}: {exc}") from None
    partial.replace(dest)
    return dest
