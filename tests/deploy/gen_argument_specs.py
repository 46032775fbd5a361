"""Keeps roles/*/meta/argument_specs.yml in step with roles/*/defaults/main.yml.

    .venv/bin/python tests/deploy/gen_argument_specs.py           # update the files
    .venv/bin/python tests/deploy/gen_argument_specs.py --check   # only verify (exit 1)

The argument specs are written for people and kept by hand: each option's
description, type, elements, choices, nested options and no_log, and the entry
points (short_description, description, which options each one takes).  This
script owns what can be derived and checks the rest:

* every option's ``default`` is copied from defaults/main.yml exactly (a Jinja
  expression stays a Jinja expression);
* a variable new in defaults/main.yml gets an option in the ``main`` entry point,
  described by the comment block right above it when that block is a real
  sentence, and typed from its value (review it and add ``choices`` by hand);
* the options follow the order of defaults/main.yml.

It fails, writing nothing, when a role has an option without a real description
(missing, shorter than five words, not ending with a full stop, or just its
name reworded), without a type, without a default in defaults/main.yml while not
``required: true``, whose literal default fails its own spec (Ansible's
ArgumentSpecValidator: type, elements, choices, nested options), that names a
computed variable of vars/main.yml (those are not inputs), or whose name lacks the
role prefix; when a variable is in both defaults/ and vars/; and when an entry
point lacks short_description or description.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
WRAP = 110          # folded descriptions are wrapped at this column
INLINE = 120        # lists and mappings up to this column are written in flow style

HEADER = """\
---
# Inputs of the {role} role.  Descriptions, types, choices and entry points are
# kept by hand here; each `default` is copied from defaults/main.yml by
# tests/deploy/gen_argument_specs.py (run it after changing a default; --check
# verifies).  Values computed in vars/main.yml are not inputs and are not listed.
# The script rewrites this file: comments below this header are not kept.
"""

ENTRY_KEYS = ["short_description", "description", "author", "version_added"]
OPTION_KEYS = ["description", "type", "elements", "required", "default", "choices", "no_log", "options"]


class SpecError(Exception):
    pass


# ----------------------------------------------------------------------- reading

def has_jinja(value) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, list):
        return any(has_jinja(v) for v in value)
    if isinstance(value, dict):
        return any(has_jinja(v) for v in value.values())
    return False


def comments_above(text: str) -> dict[str, str]:
    """The comment block right above each top-level key (no blank line between)."""
    lines = text.splitlines()
    found = {}
    for i, line in enumerate(lines):
        match = re.match(r"^([a-z][a-z0-9_]*):", line)
        if not match:
            continue
        block = []
        j = i - 1
        while j >= 0 and lines[j].startswith("#"):
            block.insert(0, lines[j].lstrip("#").strip())
            j -= 1
        found[match.group(1)] = " ".join(c for c in block if c)
    return found


def name_words(role: str, name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.removeprefix(role + "_").lower()).strip()


def description_problem(role: str, name: str, text) -> str | None:
    """Why ``text`` is not a description a newcomer can use, or None."""
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    if not isinstance(text, str) or not text.strip():
        return "has no description"
    words = text.split()
    plain = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    if plain in (name_words(role, name), name_words("", name)):
        return f"has only its name as description ({text!r})"
    if len(words) < 5:
        return f"has too short a description ({text!r})"
    if not re.search(r"[.!?][)\"'`]*$", text.rstrip()):
        return f"has a description that is not a sentence ({text!r})"
    return None


def guess_option(value) -> dict:
    """Type (and elements) of a new option from its literal default."""
    if value is None or has_jinja(value):
        raise SpecError("its default is a Jinja expression or null, so its type cannot be guessed: "
                        "write the option in meta/argument_specs.yml by hand")
    kinds = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    if type(value) not in kinds:
        raise SpecError(f"its default is a {type(value).__name__}: write the option in meta/argument_specs.yml by hand")
    option = {"type": kinds[type(value)]}
    if isinstance(value, list) and value:
        element_kinds = {kinds.get(type(v), "raw") for v in value}
        option["elements"] = element_kinds.pop() if len(element_kinds) == 1 else "raw"
    return option


def validate_default(name: str, option: dict, value) -> list[str]:
    """Ansible's own validation of a literal default against its option."""
    try:
        from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    except ImportError:  # pragma: no cover - the deploy venv has ansible-core
        raise SpecError("ansible-core is not importable: run this with .venv/bin/python") from None
    result = ArgumentSpecValidator({name: without_docs(option)}).validate({name: value})
    return list(result.error_messages)


def without_docs(option: dict) -> dict:
    """The option as the validator takes it: no description, no top-level default."""
    option = {k: v for k, v in option.items() if k not in ("description", "default")}
    if isinstance(option.get("options"), dict):
        option["options"] = {k: without_docs(v) | ({"default": v["default"]} if "default" in v else {})
                             for k, v in option["options"].items()}
    return option


def same(a, b) -> bool:
    """Equal, telling 1, 1.0 and true apart."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def normalise(node, key=None):
    """The spec as it is written out: descriptions with single spaces only."""
    if key in ("default", "choices"):
        return node
    if isinstance(node, dict):
        return {k: normalise(v, k) for k, v in node.items()}
    if key in ("description", "short_description"):
        if isinstance(node, str):
            return " ".join(node.split())
        if isinstance(node, list):
            return [" ".join(str(p).split()) for p in node]
    return node


def check_suboptions(where: str, options) -> list[str]:
    """Nested options (elements: dict) need a type and a real description too."""
    errors = []
    for name, option in (options or {}).items():
        if not isinstance(option, dict):
            errors.append(f"{where}.{name} is not a mapping")
            continue
        text = option.get("description")
        if not isinstance(text, (str, list)) or len(" ".join(text if isinstance(text, list) else [text]).split()) < 3:
            errors.append(f"{where}.{name} has no real description")
        if not option.get("type"):
            errors.append(f"{where}.{name} has no type")
        errors += check_suboptions(f"{where}.{name}", option.get("options"))
    return errors


# ----------------------------------------------------------------------- syncing

def sync_role(role: str) -> tuple[str, list[str], list[str]]:
    """The new text of the role's argument_specs.yml, the errors, and notes on changes."""
    base = ROLES / role
    errors: list[str] = []
    notes: list[str] = []
    defaults_text = (base / "defaults/main.yml").read_text()
    defaults = yaml.safe_load(defaults_text) or {}
    vars_path = base / "vars/main.yml"
    computed = (yaml.safe_load(vars_path.read_text()) or {}) if vars_path.exists() else {}
    spec_path = base / "meta/argument_specs.yml"
    specs = (yaml.safe_load(spec_path.read_text()) or {}).get("argument_specs") if spec_path.exists() else None
    if not isinstance(specs, dict) or "main" not in specs:
        specs = {"main": {}}
        errors.append(f"{role}: meta/argument_specs.yml has no `main` entry point")
    specs = normalise(specs)
    comments = comments_above(defaults_text)
    order = list(defaults)

    for name in sorted(set(defaults) & set(computed)):
        errors.append(f"{role}: {name} is in both defaults/main.yml and vars/main.yml "
                      "(an input or a computed value, not both)")

    main_options = specs["main"].setdefault("options", {}) or {}
    specs["main"]["options"] = main_options
    for name in order:
        if name not in main_options:
            try:
                option = guess_option(defaults[name])
            except SpecError as exc:
                errors.append(f"{role}: {name} is new in defaults/main.yml but not in the spec: {exc}")
                continue
            option = {"description": comments.get(name, "")} | option
            problem = description_problem(role, name, option["description"])
            if problem:
                errors.append(f"{role}: {name} is new in defaults/main.yml and not in the spec, and the comment "
                              f"above it is no description ({name} {problem}): write a sentence or two there "
                              "or in meta/argument_specs.yml")
                continue
            main_options[name] = option
            notes.append(f"{role}: added {name} from its comment; check its type and choices")

    for entry, spec in specs.items():
        if not isinstance(spec, dict):
            errors.append(f"{role}: entry point {entry} is not a mapping")
            continue
        for key in ("short_description", "description"):
            if not spec.get(key):
                errors.append(f"{role}: entry point {entry} has no {key}")
        options = spec.get("options") or {}
        for name, option in options.items():
            where = f"{role}: {entry}: {name}"
            if not name.startswith(role + "_"):
                errors.append(f"{where} lacks the role prefix {role}_")
            if name in computed:
                errors.append(f"{where} is computed in vars/main.yml: not an input, remove it from the spec")
                continue
            if not isinstance(option, dict):
                errors.append(f"{where} is not a mapping")
                continue
            problem = description_problem(role, name, option.get("description"))
            if problem:
                errors.append(f"{where} {problem}")
            if not option.get("type"):
                errors.append(f"{where} has no type")
            errors += check_suboptions(where, option.get("options"))
            if name in defaults:
                if "default" not in option or not same(option["default"], defaults[name]):
                    if "default" in option:
                        notes.append(f"{role}: {entry}: {name}: default updated from defaults/main.yml")
                    option["default"] = defaults[name]
                if option.get("required"):
                    errors.append(f"{where} is required but has a default in defaults/main.yml")
                if not has_jinja(defaults[name]):
                    for message in validate_default(name, option, defaults[name]):
                        errors.append(f"{where}: its default {defaults[name]!r} fails its own spec: {message}")
            elif not option.get("required"):
                errors.append(f"{where} has no default in defaults/main.yml: add one, or mark it required: true")
            elif "default" in option:
                errors.append(f"{where} is required: it must have no default")
        spec["options"] = dict(sorted(options.items(),
                                      key=lambda kv: order.index(kv[0]) if kv[0] in order else -1))

    text = HEADER.format(role=role) + dump({"argument_specs": specs})
    if not same(yaml.safe_load(text), {"argument_specs": specs}):  # the emitter must round-trip
        errors.append(f"{role}: internal error: the written YAML does not read back the same")
    return text, errors, notes


# ----------------------------------------------------------------------- writing

def scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...")
    if "\n" in text or (text.startswith("'") and "''" in text):
        return json.dumps(value, ensure_ascii=False)  # "{{ x | default('y') }}" reads better than '...''y''...'
    return text


def flow(value) -> str:
    """``value`` in flow style: [a, b] and {k: v}, strings quoted where the flow context needs it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{flow(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    text = yaml.safe_dump([value], default_flow_style=True, width=10**6, allow_unicode=True).strip()[1:-1]
    if "\n" in text or (text.startswith("'") and "''" in text):
        return json.dumps(value, ensure_ascii=False)
    return text


def text_block(key: str, text: str, indent: int) -> list[str]:
    pad = " " * indent
    text = " ".join(text.split())
    line = f"{pad}{key}: {scalar(text)}"
    if len(line) <= WRAP and "\n" not in scalar(text):
        return [line]
    wrapped = textwrap.wrap(text, WRAP - indent - 2, break_long_words=False, break_on_hyphens=False)
    return [f"{pad}{key}: >-", *(f"{pad}  {part}" for part in wrapped)]


def value_lines(key: str, value, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, (list, dict)) and value:
        inline = f"{pad}{key}: {flow(value)}"
        if len(inline) <= INLINE and "\n" not in inline:
            return [inline]
        lines = [f"{pad}{key}:"]
        if isinstance(value, dict):
            for k, v in value.items():
                lines += value_lines(scalar(k), v, indent + 2)
        else:
            for item in value:
                if isinstance(item, dict) and item:
                    first, *rest = list(item.items())
                    sub = value_lines(scalar(first[0]), first[1], indent + 4)
                    lines.append(f"{pad}  - {sub[0].lstrip()}")
                    lines += sub[1:]
                    for k, v in rest:
                        lines += value_lines(scalar(k), v, indent + 4)
                else:
                    lines.append(f"{pad}  - {flow(item) if isinstance(item, (list, dict)) else scalar(item)}")
        return lines
    return [f"{pad}{key}: {flow(value) if isinstance(value, (list, dict)) else scalar(value)}"]


def option_lines(name: str, option: dict, indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}{name}:"]
    keys = [k for k in OPTION_KEYS if k in option] + [k for k in option if k not in OPTION_KEYS]
    for key in keys:
        value = option[key]
        if key == "description":
            lines += description_lines(value, indent + 2)
        elif key == "options":
            lines.append(f"{pad}  options:")
            for sub_name, sub in value.items():
                lines += option_lines(sub_name, sub, indent + 4)
        else:
            lines += value_lines(key, value, indent + 2)
    return lines


def description_lines(value, indent: int) -> list[str]:
    if not isinstance(value, list):
        return text_block("description", str(value), indent)
    pad = " " * indent
    lines = [f"{pad}description:"]
    for paragraph in value:
        text = " ".join(str(paragraph).split())
        one = f"{pad}  - {scalar(text)}"
        if len(one) <= WRAP:
            lines.append(one)
        else:
            wrapped = textwrap.wrap(text, WRAP - indent - 4, break_long_words=False, break_on_hyphens=False)
            lines += [f"{pad}  - >-", *(f"{pad}    {part}" for part in wrapped)]
    return lines


def dump(data: dict) -> str:
    lines = ["argument_specs:"]
    for entry, spec in data["argument_specs"].items():
        lines.append(f"  {entry}:")
        keys = [k for k in ENTRY_KEYS if k in spec] + [k for k in spec if k not in ENTRY_KEYS + ["options"]]
        for key in keys:
            if key in ("short_description", "description"):
                lines += description_lines(spec[key], 4) if key == "description" else text_block(key, spec[key], 4)
            else:
                lines += value_lines(key, spec[key], 4)
        lines.append("    options:")
        for name, option in (spec.get("options") or {}).items():
            lines += option_lines(name, option, 6)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date or wrong")
    parser.add_argument("roles", nargs="*", help="roles to process (default: every role)")
    args = parser.parse_args(argv)
    roles = args.roles or sorted(p.name for p in ROLES.iterdir() if (p / "defaults/main.yml").exists())
    try:
        results = {role: sync_role(role) for role in roles}
    except SpecError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    errors = [e for _, errs, _ in results.values() for e in errs]
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} problem(s); nothing written.", file=sys.stderr)
        return 1
    stale = []
    for role, (text, _, notes) in results.items():
        path = ROLES / role / "meta/argument_specs.yml"
        if path.exists() and path.read_text() == text:
            continue
        stale.append(role)
        for note in notes:
            print(note)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print("out of date (run tests/deploy/gen_argument_specs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
