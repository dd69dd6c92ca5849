"""The unit tests: pure logic. The app they may build has no database: any statement fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """Return an app whose database cannot be opened (its folder is gone), its scheduler
    off: what it serves without a database, it serves."""
    folder = tmp_path / "gone"
    folder.mkdir()  # a missing folder is a bad setting at start-up: it goes only after
    application = create_app(
        {"DATABASE_URL": f"sqlite:///{folder / 'tasks.db'}", "SCHEDULER_ENABLED": "false"}
    )
    folder.rmdir()
    application.config["TESTING"] = True
    yield application
    application.extensions["store"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of `app`."""
    return app.test_client()
