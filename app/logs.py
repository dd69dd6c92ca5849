"""Logging set-up: text, or one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
from typing import Any

from app.events import stamp

# Task fields a record may carry as extras; the JSON formatter writes them out.
FIELDS = ("task_id", "type", "attempt", "status", "reason")


class TextFormatter(logging.Formatter):
    """`time level logger message`, the time in UTC as the JSON lines and task events write it."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{stamp(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the task's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str) -> None:
    """Send logs to stderr as text or JSON; call once per process."""
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
