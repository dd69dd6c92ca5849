"""The OpenAPI document through independent tools: Redocly CLI lints it, and a client that
openapi-python-client generates from a real server's document calls every operation of
that server. The document's own checks: tests/unit/test_openapi.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.auth import TOKEN
from tests.support.openapi import URL
from tests.support.openapi_tools import generate_client, redocly_lint, run_client_script
from tests.support.servers import Launcher


def test_redocly_finds_no_problem(launcher: Launcher, db: Path, tmp_path: Path) -> None:
    server = launcher.gunicorn(db, ready="disabled", SCHEDULER_ENABLED="false")
    document = server.get(URL).json()
    report = redocly_lint(document, tmp_path)
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, report["problems"]


def test_a_generated_client_calls_every_operation(
    launcher: Launcher, db: Path, tmp_path: Path, generator: Path
) -> None:
    server = launcher.gunicorn(db, API_TOKEN=TOKEN, EVENT_STREAM_MAX_S="1")
    document: dict[str, Any] = server.get(URL).json()
    packages = generate_client(generator, server.base_url + URL, tmp_path)
    called = run_client_script(generator, packages, server.base_url, TOKEN)
    operations = {
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert set(called) == operations
