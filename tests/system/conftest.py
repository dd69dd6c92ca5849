"""The system tests: real processes (gunicorn, `flask ...`, a browser, a PostgreSQL cluster).

Every test in this folder is marked `slow`: `-m "not slow"` leaves them out. The fixtures
start servers on a migrated SQLite file, and a headless Chromium to look at them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps import IN_CI
from tests.support.openapi_tools import generator_env
from tests.support.servers import Launcher, copy_db, run_flask

HERE = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic is refused here; keep it quiet and fast.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder `slow`."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Start servers for one test; kill every process they left at teardown."""
    started = Launcher(tmp_path)
    yield started
    started.close()


@pytest.fixture(scope="session")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a SQLite file migrated once by `flask db upgrade`, to copy for each test."""
    path = tmp_path_factory.mktemp("schema") / "schema.db"
    done = run_flask(path, "db", "upgrade")
    assert done.returncode == 0, done.stdout + done.stderr
    return path


@pytest.fixture
def db(schema: Path, tmp_path: Path) -> Path:
    """Return this test's own migrated, empty SQLite file."""
    path = tmp_path / "tasks.db"
    copy_db(schema, path)
    return path


@pytest.fixture(scope="session")
def generator(request: pytest.FixtureRequest) -> Path:
    """Return the Python of an environment holding openapi-python-client, kept in the pytest
    cache between runs (built on first use: about 15 s)."""
    return generator_env(request.config.cache.mkdir("openapi-generator"))


@pytest.fixture
def browser() -> Iterator[Any]:
    """Yield headless Chromium driven by Playwright (the Debian package, no download)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Any:
    """Return a page of `browser`, 1280 by 1000."""
    return browser.new_page(viewport={"width": 1280, "height": 1000})
