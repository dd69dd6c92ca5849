"""With LOG_FORMAT=json every log line of every process is one JSON object."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import (
    REQUEST_TIMEOUT_S,
    Launcher,
    run_flask,
    run_to_exit,
    service_env,
)

BASIC_USER, BASIC_SECRET = "someone", "basic-secret-0123456789"


def _parse(text: str) -> list[dict[str, Any]]:
    """Parse every line of `text` as JSON (failing on the first that is not)."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{text}") from None
    return parsed


def _messages(lines: list[dict[str, Any]], logger: str) -> list[str]:
    return [line["message"] for line in lines if line["logger"] == logger]


def test_migrations_gunicorn_and_its_access_log_write_json_lines(
    launcher: Launcher, tmp_path: Path
) -> None:
    db = tmp_path / "fresh.db"
    upgrade = run_flask(db, "db", "upgrade", LOG_FORMAT="json")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    migration = _parse(upgrade.stdout + upgrade.stderr)
    assert any(
        m.startswith("Running upgrade") for m in _messages(migration, "alembic.runtime.migration")
    )

    server = launcher.gunicorn(db, LOG_FORMAT="json", GUNICORN_ACCESS_LOG="-")
    server.submit("a", 10)
    server.wait_status("a", "COMPLETED")
    answer = requests.get(
        server.base_url + "/api/tasks?limit=5",
        auth=(BASIC_USER, BASIC_SECRET),
        headers={"User-Agent": "json-logs-test"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert answer.status_code == 200
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0

    lines = _parse(server.log())
    errors = _messages(lines, "gunicorn.error")
    assert any(m.startswith("Listening at: http://127.0.0.1:") for m in errors), errors
    assert any(m.startswith("Booting worker with pid") for m in errors), errors
    assert any(m.startswith("task a COMPLETED") for m in _messages(lines, "app.events"))
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    listing = next(line for line in access if line["user_agent"] == "json-logs-test")
    assert listing["remote_addr"] == "127.0.0.1"
    assert (listing["method"], listing["path"], listing["query"]) == (
        "GET",
        "/api/tasks",
        "limit=5",
    )
    assert listing["status"] == 200 and listing["bytes"] == len(answer.content)
    assert listing["duration_ms"] >= 0
    assert BASIC_USER not in server.log() and BASIC_SECRET not in server.log()


def test_flask_scheduler_run_writes_json_lines(launcher: Launcher, db: Path) -> None:
    scheduler = launcher.scheduler(db, LOG_FORMAT="json")
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait_exit(30) == 0
    said = _messages(_parse(scheduler.log()), "app.cli")
    assert any(" running " in m for m in said) and "scheduler stopped" in said, said


def test_flask_run_writes_json_lines(launcher: Launcher, db: Path) -> None:
    server = launcher.flask_run(db, "--reload", LOG_FORMAT="json")
    server.submit("a", 10)
    server.wait_status("a", "COMPLETED")
    server.signal_group(signal.SIGINT)
    server.wait_exit(30)
    lines = _parse(server.log())
    assert _messages(lines, "app.devserver") == ["serving Flask app 'wsgi', debug mode off"]
    served = " ".join(_messages(lines, "werkzeug"))
    assert "Running on http://127.0.0.1:" in served and "\x1b[" not in served


def test_make_db_upgrade_prints_json_lines_only(tmp_path: Path) -> None:
    venv = Path(sys.executable).parents[1]
    if not (venv / "bin" / ".installed").exists():
        pytest.skip("the tests do not run in a venv built by `make install`")
    env = service_env(tmp_path / "fresh.db", LOG_FORMAT="json")
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):  # as typed in a shell, not a sub-make
        env.pop(name, None)
    done = run_to_exit(["make", "db-upgrade", f"VENV={venv}"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = _parse(done.stdout + done.stderr)
    assert any(
        m.startswith("Running upgrade") for m in _messages(lines, "alembic.runtime.migration")
    )
