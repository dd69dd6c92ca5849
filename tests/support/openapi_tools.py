"""Third-party tools run on the OpenAPI document: a client generator and a second linter.

openapi-python-client lives in a virtual environment of its own, built once in a cache
folder and reused; Redocly CLI runs through `npx`. Without the package index (or `npx`)
a test skips, except in CI, where it fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.apps import IN_CI

GENERATOR = "openapi-python-client==0.29.1"
REDOCLY = "@redocly/cli@2.77.0"
PACKAGE = "task_scheduler_client"
# The script that drives a real server through the generated client, run in the
# generator's environment (it imports the generated package, not the app).
CLIENT_SCRIPT = Path(__file__).resolve().parent / "generated_client_run.py"
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120


def _run(argv: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def unavailable(reason: str) -> None:
    """Skip the test for want of a tool or the network; in CI, fail it instead."""
    if IN_CI:
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def generator_env(cache: Path) -> Path:
    """Return a virtual environment with the pinned generator, built in `cache` if missing."""
    env = cache / GENERATOR.replace("==", "-")
    python = env / "bin" / "python"
    if (env / "installed").exists():
        return python
    # Built in place: a venv's scripts name its folder. The marker, written last, says done.
    shutil.rmtree(env, ignore_errors=True)
    made = _run([sys.executable, "-m", "venv", str(env)], INSTALL_TIMEOUT_S)
    assert made.returncode == 0, made.stdout + made.stderr
    pip = [str(python), "-m", "pip"]
    installed = _run([*pip, "install", "--quiet", GENERATOR], INSTALL_TIMEOUT_S)
    if installed.returncode != 0:
        probe = _run([*pip, "index", "versions", GENERATOR.split("==")[0]], INSTALL_TIMEOUT_S)
        if probe.returncode != 0:
            unavailable(f"the package index is unreachable: {probe.stderr.strip()[-300:]}")
        raise AssertionError(f"installing {GENERATOR} failed:\n{installed.stderr[-3000:]}")
    (env / "installed").touch()
    return python


def generate_client(python: Path, document_url: str, folder: Path) -> Path:
    """Generate the client package from the served document; return the folder holding it.

    Any warning of the generator fails: one means part of the API has no client code.
    """
    config = folder / "generator.json"
    config.write_text(json.dumps({"post_hooks": [], "package_name_override": PACKAGE}))
    argv = [
        str(python),
        "-m",
        "openapi_python_client",
        "generate",
        "--url",
        document_url,
        "--meta",
        "none",
    ]
    argv += ["--output-path", str(folder / PACKAGE), "--config", str(config)]
    done = _run(argv, RUN_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Warning" not in output and "Error" not in output, output
    return folder


def run_client_script(python: Path, packages: Path, base_url: str, token: str) -> Any:
    """Run the client script against `base_url`; return what it printed as JSON."""
    env = {"PYTHONPATH": str(packages), "PATH": str(python.parent)}
    done = _run([str(python), str(CLIENT_SCRIPT), base_url, token], RUN_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def redocly_lint(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Lint the document with Redocly CLI's recommended rules; return its JSON report."""
    npx = shutil.which("npx")
    if npx is None:
        unavailable("npx (Node.js) is not installed")
    path = folder / "openapi.json"
    path.write_text(json.dumps(document))
    argv = [str(npx), "--yes", REDOCLY, "lint", str(path), "--format", "json"]
    done = _run(argv, INSTALL_TIMEOUT_S, cwd=folder)
    start = done.stdout.find("{")
    if start < 0:
        if "ENOTFOUND" in done.stderr or "EAI_AGAIN" in done.stderr:
            unavailable(f"the npm registry is unreachable: {done.stderr.strip()[-300:]}")
        raise AssertionError(done.stdout + done.stderr)
    report: dict[str, Any] = json.loads(done.stdout[start:])
    return report
