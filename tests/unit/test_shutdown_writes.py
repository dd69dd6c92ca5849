"""A write that fails at shutdown: one line for a database outage, a traceback for a bug."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from sqlalchemy.exc import DBAPIError

from app.runtime.scheduler import _safely


def _io_error() -> DBAPIError:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 10  # type: ignore[attr-defined]
    error.sqlite_errorname = "SQLITE_IOERR"  # type: ignore[attr-defined]
    return DBAPIError.instance("UPDATE", None, error, sqlite3.OperationalError)


def deregister() -> None:
    raise _io_error()


def set_state() -> None:
    raise RuntimeError("a bug")


def test_an_outage_at_shutdown_is_one_line_and_a_bug_keeps_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="app.scheduler"):
        assert _safely(deregister) is None
        assert _safely(set_state) is None
    outage, bug = caplog.records
    assert outage.getMessage().startswith("deregister failed during shutdown: ")
    assert outage.exc_info is None
    assert bug.getMessage() == "set_state failed during shutdown" and bug.exc_info is not None
