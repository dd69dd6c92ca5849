"""Logging set-up: text, or one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from typing import Any

from app.events import stamp

# Fields a record may carry as extras, the JSON formatter writes them out: a task's, then
# those of gunicorn's access lines (app/serverlogs.py; `status` is then the HTTP status).
FIELDS = (
    "task_id",
    "type",
    "attempt",
    "status",
    "reason",
    "remote_addr",
    "method",
    "path",
    "query",
    "bytes",
    "duration_ms",
    "user_agent",
)


class TextFormatter(logging.Formatter):
    """`time level logger message`, the time in UTC as the JSON lines and task events write it."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{stamp(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# ANSI SGR sequences (`ESC[31m` and the like).
COLOURS = re.compile(r"\x1b\[[0-9;]*m")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the task's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            # Without terminal colours: Flask's development server paints its lines.
            "message": COLOURS.sub("", record.getMessage()),
        }
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str) -> None:
    """Send logs to stderr as text or JSON; call once per process.

    Python's warnings become log lines too, and with JSON so do uncaught exceptions, so
    that nothing else reaches stderr.
    """
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    if not any(getattr(h, "_task_scheduler", False) for h in root.handlers):
        handler._task_scheduler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    if log_format == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    logging.getLogger("app").critical("uncaught exception", exc_info=(kind, error, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("app").critical(
        "uncaught exception in thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
