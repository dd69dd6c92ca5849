"""Every environment variable the code reads is a row of docs/configuration.md."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Where the service, its server and its migrations read the environment.
SOURCES = [*sorted((ROOT / "app").rglob("*.py")), ROOT / "gunicorn.conf.py", ROOT / "wsgi.py"]
SOURCES.append(ROOT / "migrations" / "env.py")
READ = re.compile(
    r"""os\.(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']"""
)
# A Makefile variable given with `?=` is meant to be set from the environment.
MAKE_DEFAULT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\?=", re.MULTILINE)


def read_variables() -> set[str]:
    """Return the name of every environment variable the code reads."""
    found = {spec.metadata["env"] for spec in fields(Settings)}
    for source in SOURCES:
        found.update(READ.findall(source.read_text()))
    found.update(MAKE_DEFAULT.findall((ROOT / "Makefile").read_text()))
    return found


def documented_variables() -> set[str]:
    """Return the variables that start a table row of docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    return set(re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", text, re.MULTILINE))


def test_the_scan_finds_the_settings_read_outside_settings() -> None:
    read = read_variables()
    assert {"TASK_DATA_DIR", "HOST", "LOG_FORMAT", "PORT", "VENV"} <= read


def test_every_variable_read_is_in_the_configuration_tables() -> None:
    missing = sorted(read_variables() - documented_variables())
    assert not missing, f"read but not in docs/configuration.md's tables: {missing}"
