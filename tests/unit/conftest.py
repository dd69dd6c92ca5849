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
    """Return an app whose database cannot be opened (its folder does not exist), its
    scheduler off: what it serves without a database, it serves."""
    application = create_app(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'no-such-folder' / 'tasks.db'}",
            "SCHEDULER_ENABLED": "false",
        }
    )
    application.config["TESTING"] = True
    yield application
    application.extensions["store"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Return a test client of `app`."""
    return app.test_client()
