"""The code bundle shipped to the VMs: the project's own files and nothing else.

    python scripts/bundle.py --out .deploy/<prefix>/bundle/iot-pipeline.tar.gz

An allow-list, not "the repository minus some excludes": the Python packages, the
requirement files and the project metadata.  A clouds.yaml, a vault file, a
virtualenv, results or anything else lying in the checkout never leaves the laptop.
It works the same in a git clone and in a downloaded ZIP without .git.  The archive
is reproducible (sorted entries, fixed owner and times), so an unchanged project
gives byte-identical bundles and the playbook reports no change.  Prints the
archive's sha256 and "changed" or "unchanged".
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the VMs run.  Not bench/ (one-off cost studies, docs/PERFORMANCE.md) nor tests/:
# they stay in the checkout.
PACKAGES = ("common", "producer", "consumers", "inference", "stack", "experiments", "analysis")
FILES = ("pyproject.toml", "requirements.txt", "requirements-deploy.txt", "README.md")
FOLDERS = ("requirements",)
SKIP_SUFFIXES = (".pyc", ".pyo")


def members(root: Path = ROOT) -> list[Path]:
    """The files of the bundle, relative to ``root``, sorted."""
    out = [Path(f) for f in FILES if (root / f).is_file()]
    for top in PACKAGES + FOLDERS:
        for path in (root / top).rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in SKIP_SUFFIXES:
                out.append(rel)
    return sorted(out)


def build(root: Path = ROOT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in members(root):
            data = (root / rel).read_bytes()
            info = tarfile.TarInfo(str(rel))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bundle.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the .tar.gz to write")
    p.add_argument("--root", type=Path, default=ROOT, help="the project (default: this checkout)")
    args = p.parse_args(argv)
    data = build(args.root)
    old = args.out.read_bytes() if args.out.is_file() else None
    if old != data:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(data)
    print(f"{hashlib.sha256(data).hexdigest()} {'unchanged' if old == data else 'changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
