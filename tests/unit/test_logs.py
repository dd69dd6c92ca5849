"""Logs as JSON with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging

import pytest

from app.config import ConfigError, Settings
from app.logs import JsonFormatter


def test_the_json_format_is_one_object_per_line() -> None:
    record = logging.LogRecord("app.events", logging.INFO, __file__, 1, "task %s", ("x",), None)
    record.task_id, record.status, record.reason = "x", "RUNNING", "claimed by w"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "task x"
    assert (line["task_id"], line["status"], line["reason"]) == ("x", "RUNNING", "claimed by w")
    assert line["level"] == "INFO" and line["time"].endswith("+00:00")


def test_log_format_must_be_text_or_json() -> None:
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})
