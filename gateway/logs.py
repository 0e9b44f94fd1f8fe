"""Structured logs: one line per event, as logfmt (``--log-format text``) or JSON (``json``).

Every process of the server (supervisor, frontends, runtime workers) calls ``configure`` first
thing, with the same level and format, so one server writes one kind of line whichever process
wrote it. Every line carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``process``,
``logger`` and ``event``, then the event's fields. Records of other libraries' loggers (uvicorn,
grpc, asyncio, a framework's Python logging, ``warnings``) get the same fields, with
``event=log`` and their text in ``msg``; an exception's traceback is one ``exc`` field, so a
traceback never spreads over lines that a log shipper would split into events.
"""

import logging
import re
import sys
import threading
import time
from types import TracebackType
from typing import Any

import orjson


class _Event:
    """A ``log_event`` message: rendered (as logfmt) only when something asks for its text."""

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: dict[str, Any]) -> None:
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={_value(v)}" for k, v in (("event", self.event), *self.fields.items()))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with its fields as one line."""
    if logger.isEnabledFor(level):
        logger.log(level, _Event(event, fields))


#: A value holding any of these (or empty) is quoted.
_NEEDS_QUOTES = re.compile(r'[\s="\\]|^$')
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _value(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.translate(_ESCAPES) + '"'


def rfc3339(created: float) -> str:
    """``2026-12-01T08:07:52.000Z``: a record's time, UTC, to the millisecond."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class LineFormatter(logging.Formatter):
    """One record as one line of logfmt or JSON, with the server's common fields first."""

    def __init__(self, process: str, log_format: str) -> None:
        super().__init__()
        self._process = process
        self._json = log_format == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"ts": rfc3339(record.created), "level": record.levelname.lower(),
                                  "process": self._process, "logger": record.name}
        message = record.msg
        if isinstance(message, _Event):
            fields["event"] = message.event
            fields.update(message.fields)
        else:
            fields["event"] = "log"
            fields["msg"] = record.getMessage()
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            fields["stack"] = record.stack_info
        if self._json:
            return orjson.dumps(fields, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def configure(level: str, log_format: str = "text", process: str = "supervisor") -> None:
    """Log every logger's records to stderr at ``level``, one ``LineFormatter`` line each; uncaught
    exceptions (main thread and others) and ``warnings`` become log lines too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(process, log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # What no line shows is not gathered per record (the logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.captureWarnings(True)
    # hpack logs every header block it decodes at debug, header values (API keys) included: never shown.
    logging.getLogger("hpack").setLevel(logging.WARNING)
    log = logging.getLogger("tensorgate.uncaught")

    def uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught exception", exc_info=(kind, exc, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            name = args.thread.name if args.thread is not None else "?"
            log.error("uncaught exception in thread %s", name,
                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
