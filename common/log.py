"""Logging set up once per entry point; modules just call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import sys

from common.settings import LogSettings, SettingsError

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def setup_logging(level: str | None = None) -> None:
    """Log to stderr at ``level``, else LOG_LEVEL.  An invalid LOG_LEVEL ends the program with
    status 2 and the message, like every other invalid setting, before anything else runs."""
    if sys.excepthook is sys.__excepthook__:  # a hook of the host (a debugger, IPython) stays
        sys.excepthook = _settings_error_hook
    if level is None:
        try:
            level = LogSettings().log_level
        except SettingsError as exc:
            print(f"{exc}", file=sys.stderr)
            raise SystemExit(2) from None
    level = level.upper()
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    # kafka-python is chatty at INFO about every connection and rebalance step.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _settings_error_hook(kind, value, tb) -> None:
    """A settings group loaded without a parser (``KafkaSettings()``) that fails: its message
    alone (it names the variable), not a traceback; status 1.  Every other exception as usual."""
    if issubclass(kind, SettingsError):
        print(f"{value}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, value, tb)
