"""What `make run` hands to the service: only the settings given to make itself."""

from __future__ import annotations

import os
import runpy
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make_line(target: str, marker: str, *assignments: str) -> str:
    """Return the line holding `marker` that `make <target>` would execute (`make -n`
    runs nothing)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "PORT", "HOST"))
    }
    done = subprocess.run(
        ["make", "-n", target, *assignments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return next(line for line in done.stdout.splitlines() if marker in line)


def _run_command(*assignments: str) -> str:
    """Return the gunicorn line `make run` would execute."""
    return _make_line("run", "gunicorn -c", *assignments)


def test_make_run_leaves_the_port_to_the_service_unless_given() -> None:
    # The service reads PORT from the environment or .env; make must not override it.
    assert "PORT=" not in _run_command()
    assert _run_command("PORT=8080").lstrip("@").startswith("PORT=8080 ")
    assert _run_command("HOST=::1").lstrip("@").startswith("HOST=::1 ")


def _integration_command(*assignments: str) -> str:
    """Return the script line `make integration` would execute."""
    return _make_line("integration", "integration_test.py", *assignments)


def test_make_integration_calls_the_port_make_run_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unless given to make, the port (and the token) come from the service's settings,
    .env included, as `make run` reads them: make integration called 3000 whatever
    .env said."""
    given = _integration_command("PORT=8080", "HOST=::1")
    assert given.startswith("PORT=8080 HOST=::1 ") and given.endswith("--from-settings")
    assert _integration_command().endswith("--from-settings")
    (tmp_path / ".env").write_text("PORT=3134\nAPI_TOKEN=from-the-env-file-0123456789\n")
    monkeypatch.chdir(tmp_path)
    for name in ("PORT", "API_TOKEN"):
        # Set first, so that teardown restores what was there: load_dotenv sets them in
        # this process's environment, where every later test would find them.
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    script = runpy.run_path(str(ROOT / "scripts" / "integration_test.py"))
    args = script["parse_args"](["--from-settings"])
    assert (args.base_url, args.token) == ("http://127.0.0.1:3134", "from-the-env-file-0123456789")
    given = script["parse_args"](["--from-settings", "--base-url", "http://h:1", "--token", "t"])
    assert (given.base_url, given.token) == ("http://h:1", "t")
    # The host the service binds: it called 127.0.0.1 whatever HOST said.
    for host, called in [("::1", "[::1]"), ("::", "[::1]"), ("0.0.0.0", "127.0.0.1"), ("h", "h")]:
        monkeypatch.setenv("HOST", host)
        assert script["parse_args"](["--from-settings"]).base_url == f"http://{called}:3134"
