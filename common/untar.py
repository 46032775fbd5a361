"""Extracting a tar archive without trusting it: nothing lands outside the destination.

Python's ``filter="data"`` (3.11.4 and 3.10.12 on) refuses absolute paths, ``..``, links
that leave the destination and device files.  Older interpreters that requires-python
still admits (Debian 12's 3.11.2) lack it: there every member is checked before anything
is written, and only regular files and directories inside the destination are accepted
(links are refused outright: whether a chain of them stays inside depends on the order
they are written in).

    python -m common.untar ARCHIVE DEST   # what the experiment role unpacks on the controller
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
from pathlib import Path


class UnsafeArchive(tarfile.TarError):
    """A member would be written outside the destination, or is not a file or directory."""


def extract_all(tar: tarfile.TarFile, dest: str | Path) -> None:
    """Extract every member of ``tar`` under ``dest``."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)
    members = tar.getmembers()
    for member in members:
        target = os.path.realpath(os.path.join(root, member.name))
        if os.path.isabs(member.name) or os.path.commonpath([root, target]) != root:
            raise UnsafeArchive(f"{member.name!r} would be written outside {dest}")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchive(f"{member.name!r} is not a regular file or directory")
    tar.extractall(dest, members=members)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.untar", description=__doc__.split("\n\n")[0])
    p.add_argument("archive", type=Path, help="a tar archive, compressed or not")
    p.add_argument("dest", type=Path, help="the directory to extract it under (made if missing)")
    args = p.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(args.archive) as tar:
            extract_all(tar, args.dest)
    except (OSError, tarfile.TarError) as exc:
        print(f"cannot extract {args.archive}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
