"""What `make run` hands to the service: only the settings given to make itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_command(*assignments: str) -> str:
    """Return the gunicorn line `make run` would execute (`make -n` runs nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "PORT"))}
    done = subprocess.run(
        ["make", "-n", "run", *assignments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return next(line for line in done.stdout.splitlines() if "gunicorn -c" in line)


def test_make_run_leaves_the_port_to_the_service_unless_given() -> None:
    # The service reads PORT from the environment or .env; make must not override it.
    assert "PORT=" not in _run_command()
    assert _run_command("PORT=8080").lstrip("@").startswith("PORT=8080 ")
