"""Files of the local stack that hold a secret (a password, keys, stack.env with an external
URI's password): readable by their owner only from their first byte, as os.open creates them
with mode 0600 (a chmod after writing would leave a moment when others could read them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_private(path: Path, text: str) -> None:
    """``text`` as the whole of ``path``: written beside it and renamed over it, so a reader
    sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
    tmp.replace(path)


def made_once(path: Path, make: Callable[[], str]) -> str:
    """The text of ``path``; the first time, what ``make`` returns, written there (its folder
    made).  Two makers at once: the second fails (FileExistsError) instead of replacing the
    first one's secret."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(make())
    return path.read_text()
