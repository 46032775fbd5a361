"""The other checkouts the soak runs components from: the upgrade (this tree with a
version marker changed: what a rolling upgrade deploys) and the leaky build (the same
with a deliberate leak in the DB writer, the leak detector's positive control).

Neither is a product setting: the leak exists only in a copy the soak writes under its
run directory, never in this tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import ROOT

MARKER = "SOAK_CHECKOUT"
LEAK_BYTES_PER_IMAGE = 4096
SKIP = (".venv", "pouchdb/node_modules")

# Appended to the leaky copy's consumers/__init__.py, which ``python -m consumers.db``
# imports before it runs: every image record the DB writer turns into a document keeps
# LEAK bytes for ever (a list no one empties), the shape of a real per-message leak.
LEAK_HOOK = '''

# ---- the soak's leaky build (tests/soak/builds.py): never in the real tree
def _soak_leak():
    import common.store as store

    kept = []
    real = store.image_upsert

    def image_upsert(*args, **kwargs):
        kept.append(bytearray({leak}))
        return real(*args, **kwargs)

    store.image_upsert = image_upsert


_soak_leak()
'''


def checkout_files(root: Path = ROOT) -> list[str]:
    """The tree's files as a checkout has them: tracked, plus new ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode().split("\0")
    return [f for f in out if f and not any(f == s or f.startswith(s + "/") for s in SKIP)]


def copy_checkout(dest: Path, marker: str, root: Path = ROOT) -> Path:
    """A copy of this tree at ``dest`` whose MARKER file says ``marker`` (the change)."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in checkout_files(root):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / MARKER).write_text(marker + "\n")
    return dest


def leaky_checkout(dest: Path, leak_bytes: int = LEAK_BYTES_PER_IMAGE, root: Path = ROOT) -> Path:
    """A copy of this tree whose DB writer keeps ``leak_bytes`` per image it stores."""
    copy_checkout(dest, f"leaky build: {leak_bytes} B per image in the DB writer", root)
    init = dest / "consumers" / "__init__.py"
    init.write_text(init.read_text() + LEAK_HOOK.replace("{leak}", str(int(leak_bytes))))
    return dest
