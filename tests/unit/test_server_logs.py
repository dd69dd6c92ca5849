"""gunicorn's error log: a write to a client that stopped reading (an event stream's) that
timed out is one line, not an error with a traceback (gunicorn.conf.py installs the filter
on the error log the workers share)."""

from __future__ import annotations

import json
import runpy
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from app.serverlogs import SOCKET_ERROR, JsonLogger, TimedOutClients
from app.services.streams import SEND_TIMEOUT_S
from tests.support.servers import ROOT


@contextmanager
def gunicorn_log(kind: type[Logger], path: Path, filtered: bool = True) -> Iterator[Logger]:
    """Yield a gunicorn logger of `kind` writing its error log to `path` (filtered as
    gunicorn.conf.py filters it, unless told); its handlers and filters go afterwards, as
    the loggers outlive the test."""
    config = Config()
    config.set("errorlog", str(path))
    log = kind(config)
    if filtered:
        log.error_log.addFilter(TimedOutClients(30, 20))
    try:
        yield log
    finally:
        for logger in (log.error_log, log.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
            for kept in list(logger.filters):
                logger.removeFilter(kept)


def write_to_a_stalled_reader() -> None:
    """Raise the TimeoutError gunicorn meets writing to a client that stopped reading."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.05)
        while True:
            ours.sendall(b"x" * 65536)


@pytest.mark.parametrize("kind", [Logger, JsonLogger])
def test_a_timed_out_connection_is_one_warning_line(kind: type[Logger], tmp_path: Path) -> None:
    path = tmp_path / "error.log"
    with gunicorn_log(kind, path) as log:
        try:
            write_to_a_stalled_reader()
        except TimeoutError:
            log.exception(SOCKET_ERROR)  # as gunicorn's gthread worker logs it
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "ERROR" not in lines[0]
    assert "sent nothing for 30 s in the middle of a request, or read nothing for 20 s" in lines[0]
    if kind is JsonLogger:
        assert json.loads(lines[0])["level"] == "WARNING"
    else:
        assert "[WARNING]" in lines[0]


def test_other_socket_errors_keep_their_traceback(tmp_path: Path) -> None:
    path = tmp_path / "error.log"
    with gunicorn_log(Logger, path) as log:
        try:
            raise ConnectionAbortedError("aborted")
        except OSError:
            log.exception(SOCKET_ERROR)
    text = path.read_text()
    assert "[ERROR] Socket error processing request." in text
    assert "Traceback" in text and "ConnectionAbortedError" in text


def test_the_server_settings_filter_the_error_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    with gunicorn_log(Logger, tmp_path / "error.log", filtered=False) as log:
        server = SimpleNamespace(
            log=log, cfg=SimpleNamespace(address=[]), handle_int=None, handle_term=None, signal=None
        )
        settings["on_starting"](server)  # the master, before it forks its workers
        try:
            write_to_a_stalled_reader()
        except TimeoutError:
            log.exception(SOCKET_ERROR)
    text = (tmp_path / "error.log").read_text()
    assert "[WARNING]" in text and "Traceback" not in text
    # The clients' timeout (CLIENT_TIMEOUT_S, 30 by default) and the stream's, the true ones.
    assert f"request, or read nothing for {SEND_TIMEOUT_S:g} s of an event stream" in text
