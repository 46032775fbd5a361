"""Downloads into a cache, verified: the one helper for datasets and model weights.

A download goes to ``<dest>.part`` and is renamed to ``dest`` only when complete and
its checksum matches (an md5, or the leading hex digits of its sha256, which is how
torch.hub names published checkpoints: ``<name>-<sha256 prefix>.pt``), so an
interrupted or corrupt download never looks cached; a cached file whose checksum does
not match is downloaded again.  On any failure the partial file is removed and
:class:`DownloadError` (an ``OSError``) says why.  Every socket operation is bounded by
``timeout_s``.
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
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(fh, algorithm).hexdigest()
        digest = hashlib.new(algorithm)  # Python 3.10 (file_digest is 3.11's)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


def checksum_problem(path: str | Path, *, md5: str | None = None, sha256_prefix: str | None = None) -> str | None:
    """Why ``path`` is not the file the checksums describe, or None when it is."""
    if md5 and (actual := file_digest(path)) != md5:
        return f"md5 mismatch (expected {md5}, got {actual})"
    if sha256_prefix and not (actual := file_digest(path, "sha256")).startswith(sha256_prefix.lower()):
        return f"sha256 mismatch (expected {sha256_prefix}..., got {actual[:len(sha256_prefix)]}...)"
    return None


def fetch(url: str, dest: Path, *, md5: str | None = None, sha256_prefix: str | None = None,
          timeout_s: float = 30.0, progress: bool = True) -> Path:
    """``dest`` if it is already there with the right checksum (when one is given), else
    downloaded from ``url``, with a progress bar unless ``progress`` is false."""
    dest = Path(dest)
    if dest.is_file():
        problem = checksum_problem(dest, md5=md5, sha256_prefix=sha256_prefix)
        if problem is None:
            log.info("using cached %s", dest)
            return dest
        log.warning("cached %s is damaged (%s): downloading it again", dest, problem)
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
        problem = checksum_problem(partial, md5=md5, sha256_prefix=sha256_prefix)
        if problem:
            raise DownloadError(f"{url}: {problem}; download again")
    except OSError as exc:  # URLError, HTTPError, timeouts and DNS failures are OSErrors
        partial.unlink(missing_ok=True)
        raise exc if isinstance(exc, DownloadError) else DownloadError(f"{url}: {exc}") from None
    partial.replace(dest)
    return dest
