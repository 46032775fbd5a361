"""docs/SETTINGS.md, generated from the settings classes: ``python -m common.settings_doc``.

One section per class of :data:`common.settings.SETTINGS_GROUPS` (its docstring, then one
row per variable: type, default, the field's description), and the table of removed
names.  tests/unit/test_settings_doc.py regenerates it in memory and fails when the file
differs, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from common.settings import REPLACED, RETIRED, SETTINGS_GROUPS, env_name

DOC = Path(__file__).resolve().parent.parent / "docs" / "SETTINGS.md"
COMMAND = "python -m common.settings_doc"

_BOUNDS = ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<"))


def _bounds(metadata) -> list[str]:
    # An Annotated[int, Field(ge=1)] inside a union carries its bounds in the FieldInfo.
    flat = [x for m in metadata for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
    return [f"{sign} {getattr(m, attr)}" for m in flat for kind, attr, sign in _BOUNDS if isinstance(m, kind)]


def type_text(annotation, metadata=()) -> str:
    """A field's type for people: ``int ≥ 1``, ``one of `a`, `b```, ``secret``, ``... or unset``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        parts = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        bounds = _bounds(metadata)
        text = f"{text} {', '.join(bounds)}" if bounds else text
        return f"{text}, or unset" if optional else text
    if origin is typing.Literal:
        return ("one of " if len(args) > 1 else "") + ", ".join(f"`{a}`" for a in args)
    name = "secret" if annotation is SecretStr else getattr(annotation, "__name__", str(annotation))
    bounds = _bounds(metadata)
    return f"{name} {', '.join(bounds)}" if bounds else name


def default_text(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`" if value != "" else "empty"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def section(cls) -> list[str]:
    lines = [f"## {cls.__name__}", "", inspect.cleandoc(cls.__doc__ or ""), "",
             "| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        lines.append(f"| `{env_name(name)}` | {_cell(type_text(field.annotation, field.metadata))} "
                     f"| {_cell(default_text(field))} | {_cell(field.description or '')} |")
    return lines + [""]


def render() -> str:
    """The text of docs/SETTINGS.md."""
    lines = ["# Settings reference", "",
             f"Generated from the settings classes by `{COMMAND}`: edit the fields' descriptions "
             "in `common/settings.py`, `common/settings_service.py` and `common/settings_stack.py`, "
             "then regenerate (a unit test fails while this file is stale).", "",
             "Every setting is an environment variable, the field's name in upper case; a component "
             "reads the classes it needs at start, prints its effective settings (secrets masked) "
             "and refuses to start on a bad value, naming the variable.  Command-line flags, where a "
             "description names one, override the variable and are validated the same way.  Classes "
             "share a variable where two components read the same one.", "",
             "## Removed variables", "",
             "Set under one of these names, a variable is an error that names its replacement "
             "(docs/UPGRADING.md).", "",
             "| Removed | Set instead |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in REPLACED.items()]
    lines += [f"| `{old}` | nothing: {why} |" for old, (_owner, why) in RETIRED.items()]
    lines.append("")
    for cls in SETTINGS_GROUPS:
        lines += section(cls)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DOC, help=f"file to write (default {DOC})")
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs, writing nothing")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
