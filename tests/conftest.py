"""Fixtures every folder may use. Those of one folder are in its own conftest.py (the
databases and apps of the integration tests in tests/integration/conftest.py); helpers
live in tests/support, and no conftest defines anything but fixtures and hooks.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from app import events
from tests.support.openapi import URL


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Escape what UTF-8 cannot carry in a report's captured output: the workers of
    `pytest -n` send reports as UTF-8, and a test's log may hold a lone surrogate (the
    hostile inputs a handler raises)."""
    outcome: Any = yield
    report = outcome.get_result()
    report.sections = [
        (name, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for name, text in report.sections
    ]


@pytest.fixture(scope="session", autouse=True)
def _own_temporary_directory() -> Iterator[None]:
    """Give the run a temporary directory of its own, removed at its end: what apps a
    test never stopped leave there (their wake-up sockets, app/storage/wakeups) goes with
    it. Short, so that a socket's path stays under AF_UNIX's limit; the servers the
    system tests start inherit it."""
    made = tempfile.mkdtemp(prefix="ts-")
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = made
    yield
    if before[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before[0]
    tempfile.tempdir = before[1]
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(autouse=True)
def _quiet_task_events() -> Iterator[None]:
    """Keep the state-change lines of every test's app out of the output; tests that
    read them turn them on."""
    logger = logging.getLogger(events.LOGGER)
    before = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(before)


@pytest.fixture
def task_events_on(_quiet_task_events: None) -> Iterator[None]:
    """Turn the state-change lines on: the service sets INFO at start, a bare test process
    does not."""
    logger = logging.getLogger(events.LOGGER)
    before = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(before)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return the data folder of the example handlers (TASK_DATA_DIR), empty."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("TASK_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    """Return the OpenAPI document as the app serves it."""
    response = client.get(URL)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body
