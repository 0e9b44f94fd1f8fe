"""Structured logs: one line per event, ``event=name key=value ...`` (logfmt)."""

import logging
from typing import Any


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with its fields as one logfmt line."""
    if logger.isEnabledFor(level):
        logger.log(level, "event=%s %s", event, " ".join(f"{k}={_value(v)}" for k, v in fields.items()))


def _value(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text or any(c in text for c in ' ="\n\r'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return '"' + escaped + '"'
    return text


def configure(level: str, process: str = "supervisor") -> None:
    """Log to stderr with a timestamp, the process's role and the logger's name in front of every line."""
    logging.basicConfig(
        level=level.upper(),
        format=f"ts=%(asctime)s level=%(levelname)s process={process} logger=%(name)s %(message)s",
    )
