"""Logging for the server's processes: plain lines, or one JSON object a line
(`GS_LOG_FORMAT=json`) that log shippers read without parsing rules. uvicorn's own loggers
write through the same handler, so every line of a process has one shape."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

# What a LogRecord carries by itself; anything else on it came as `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "pid"}`, plus `exc` (the traceback) when
    there is one, and any `extra=` fields; a line each."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(*, log_format: str = "text", level: str = "info") -> None:
    """One handler on stderr for the root logger, in `log_format` ("text" or "json"), at
    `level`; uvicorn's loggers write through it (at warning and above, unless `level`
    is debug: its info lines repeat what ours say)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    uvicorn_level = logging.DEBUG if level == "debug" else logging.WARNING
    for name in _UVICORN:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
        logger.setLevel(uvicorn_level)
