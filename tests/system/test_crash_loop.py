"""The crash loop of scripts/crash_loop.py in its short form: gunicorn SIGKILLed while a
client submits a random DAG; the test fails with the loop's report on any violation. That
its audit bites is tests/unit/test_crash_audit.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.crash_loop import Options, run
from tests.support.apps import require_postgres


def test_ten_kills_on_sqlite_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    report = run(Options(tasks=400, kills=10, seed=11, workdir=tmp_path, max_uptime_s=1.0))
    print(report.text())
    assert report.ok, report.text()
    assert "kills: 10 SIGKILL" in report.text()
    # Some completions added tasks (and the audit checked they exist iff those committed).
    assert "added by completions: 0 tasks" not in report.text()


@pytest.mark.postgres
def test_kills_on_postgresql_lose_nothing_and_run_nothing_twice(tmp_path: Path) -> None:
    url = require_postgres()
    options = Options(
        tasks=300, kills=5, seed=12, database_url=url, workdir=tmp_path, max_uptime_s=1.0
    )
    report = run(options)
    print(report.text())
    assert report.ok, report.text()
    assert "added by completions: 0 tasks" not in report.text()
