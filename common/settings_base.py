"""What every settings class shares: loading, errors, printing (``common.settings`` re-exports it).

A class derives from :class:`ProjectSettings`; its variables are its field names in upper
case (:func:`env_name`).  Loading it refuses a bad value or a name in :data:`REPLACED`
with :class:`SettingsError`, naming the variable; :func:`with_flags` turns that into
usage + message and exit status 2 (docs/ARCHITECTURE.md, "Settings").
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG = SettingsConfigDict(env_file=None, extra="forbid", case_sensitive=False)

# Variables no longer read, and the variable to set instead (docs/UPGRADING.md).  One set
# under its old name is an error, never ignored: a deployment that still sets it would
# otherwise run on the default without noticing.
REPLACED: dict[str, str] = {
    "BATCH_SIZE": "PREDICT_BATCH_IMAGES",
    "BATCH_WAIT_MS": "PREDICT_BATCH_WAIT_MS",
    "KAFKA_BATCH_SIZE": "KAFKA_PRODUCER_BATCH_BYTES",
    "MAX_BATCH": "MAX_REQUEST_IMAGES",
    "DYNAMIC_BATCH_MAX": "MODEL_BATCH_MAX_IMAGES",
    "DYNAMIC_BATCH_DELAY_MS": "MODEL_BATCH_DELAY_MS",
}
# Variables no longer read with nothing to set instead: why, and the variable of the
# class that refuses them (the class that read them).
RETIRED: dict[str, tuple[str, str]] = {
    "RESULTS_READ_ALL": ("RESULTS_PARTITIONS", "a producer reads only the results partition its id hashes to "
                         "(results are keyed by producer id): upgrade the inference consumers first"),
}


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the environment variable."""


_LEVEL_NAMES = ("CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET")


def level_name(value: Any) -> Any:
    """A log level given in any case, empty meaning INFO (LOG_LEVEL's validator); anything
    else is left as typed, for the error message."""
    if not isinstance(value, str):
        return value
    name = value.strip().upper() or "INFO"
    return name if name in _LEVEL_NAMES else value


def env_name(field: str) -> str:
    """The environment variable of a settings field: its name in upper case."""
    return field.upper()


def check_replaced(names: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`SettingsError` when an old name of ``names`` (old -> new) is set in
    ``environ`` (default: this process's).  Case-insensitive, like the settings themselves:
    ``batch_size`` was read as BATCH_SIZE.  Every settings class checks the old names of its
    own variables; a process that hands its environment to every component (the local
    stack's supervisor) checks them all (``names`` None: REPLACED and RETIRED)."""
    if names is None:
        names = {**REPLACED, **{old: owner for old, (owner, _why) in RETIRED.items()}}
    present = {key.upper() for key in (os.environ if environ is None else environ)}
    problems = [f"removed setting: {old} is no longer read: set {new} instead (docs/UPGRADING.md)"
                for old, new in names.items() if old in present and old not in RETIRED]
    problems += [f"removed setting: {old} is no longer read: {RETIRED[old][1]} (docs/UPGRADING.md)"
                 for old in names if old in present and old in RETIRED]
    if problems:
        raise SettingsError("; ".join(problems))


class ProjectSettings(BaseSettings):
    """Base of every settings class: read from the environment, validated, and refused
    (:class:`SettingsError`) when a value is bad or an old name of one of its variables
    is still set."""

    model_config = CONFIG

    def __init__(self, **values: Any):
        check_replaced(self.replaced_names())
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(f"invalid setting: {_problems(exc, type(self))}") from None

    @classmethod
    def replaced_names(cls) -> dict[str, str]:
        """The old names (old -> new) that loading this class refuses: those of its variables."""
        own = {env_name(f) for f in cls.model_fields}
        retired = {old: owner for old, (owner, _why) in RETIRED.items()}
        return {old: new for old, new in {**REPLACED, **retired}.items() if new in own}


def _problems(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """``NAME=value: why`` per invalid variable (the branches of a union together), secrets masked."""
    by_field: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for error in exc.errors():
        loc = error["loc"]
        if not loc:
            by_field.setdefault(cls.__name__, []).append(error["msg"])
            shown[cls.__name__] = cls.__name__
            continue
        field = str(loc[0])
        value = error.get("input")
        secret_field = field in cls.model_fields and "SecretStr" in str(cls.model_fields[field].annotation)
        shown[field] = f"{env_name(field)}={'***' if secret_field else repr(value)}"
        by_field.setdefault(field, []).append(error["msg"])
    return "; ".join(f"{shown[field]}: {' or '.join(dict.fromkeys(msgs))}" for field, msgs in by_field.items())


_SECRET_IN_URI = re.compile(r"(//[^:/@]+:)([^@]+)(@)")


def mask_uris(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it hidden."""
    return _SECRET_IN_URI.sub(r"\1***\3", text)


# Variables whose value is a secret by their name (stack.env's COUCHDB_PASSWORD, say).
_SECRET_NAME = re.compile(r"^(\s*[A-Z0-9_]*(?:PASSWORD|TOKEN|SECRET)\s*=).*$", re.MULTILINE)


def mask_env(text: str) -> str:
    """``KEY=value`` lines (stack.env) with secrets hidden: the value of a variable named as a
    password, token or secret, and the password of every URI."""
    return _SECRET_NAME.sub(r"\1***", mask_uris(text))


def mask(value: Any) -> Any:
    """Mask a secret for printing; passwords inside URIs are hidden too."""
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        return _SECRET_IN_URI.sub(r"\1***\3", raw) if "://" in raw else "***"
    return value


def describe(*groups: BaseSettings) -> str:
    """One line per effective setting, secrets masked: printed by every entry point."""
    lines = [f"  {env_name(name)}={mask(getattr(group, name))}"
             for group in groups for name in type(group).model_fields]
    return "effective settings:\n" + "\n".join(lines)


def secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def given(settings: BaseSettings, field: str) -> Any:
    """The value of ``field`` when the environment (or a flag) set it to something non-empty,
    else None: for a process that acts differently when a variable is set at all (the
    stack uses an external Kafka when KAFKA_BOOTSTRAP_SERVERS is set)."""
    if field not in settings.model_fields_set:
        return None
    value = getattr(settings, field)
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    return value if raw not in (None, "") else None


def with_flags(cls: type[BaseSettings], parser=None, **flags: Any) -> BaseSettings:
    """``cls`` read from the environment with the CLI ``flags`` that were given (not None)
    on top, validated together.  An invalid value ends the program through
    ``parser.error`` (usage + message, exit status 2) when a parser is given, else
    raises :class:`SettingsError`; it is never accepted silently."""
    given_flags = {k: v for k, v in flags.items() if v is not None}
    try:
        return cls(**given_flags)
    except SettingsError as exc:
        if parser is not None:
            parser.error(str(exc))
        raise
