"""What a new user does first: a handler module beside the service, and `pip install .`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.servers import ROOT, START_TIMEOUT_S, service_env

BIN = Path(sys.executable).parent
TEAM_HANDLERS = """
def register(registry):
    registry.register("sum", lambda ctx: {"total": sum(ctx.payload["numbers"])})
"""


def test_a_handler_module_in_the_working_directory_registers_without_pythonpath(
    tmp_path: Path,
) -> None:
    # A name of its own: a team_handlers.py that a user put in the project root, as the
    # README suggests, comes first on the import path and must not stand in for this one.
    (tmp_path / "probe_cwd_handlers.py").write_text(TEAM_HANDLERS)
    env = service_env(tmp_path / "tasks.db", TASK_HANDLERS="probe_cwd_handlers")
    env.pop("PYTHONPATH", None)
    # A path to wsgi.py puts its folder, not the working directory, on the import path.
    env["FLASK_APP"] = str(ROOT / "wsgi.py")

    done = subprocess.run(
        [str(BIN / "flask"), "tasks", "submit", "-"],
        input=json.dumps({"id": "x", "type": "other", "duration_ms": 1}),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )

    # Refused by the registry that the module filled: it was imported and registered.
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: unknown_task_type: "), done.stderr
    assert "accepted types: simulate, sum." in done.stderr


def test_the_wheel_holds_the_app_package_and_its_files_only(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(ROOT / name, source / name)
    built = run(
        tmp_path, sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", "dist", str(source)
    )

    (wheel,) = (tmp_path / "dist").glob("task_scheduler-*.whl")
    info = wheel.name.split("-py3")[0] + ".dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert {name.split("/")[0] for name in names} == {"app", info}
    for expected in (
        "app/__init__.py",
        "app/cli/tasks.py",
        "app/templates/dashboard/index.html",
        "app/static/dashboard/index.js",
        "app/static/dashboard/dashboard.css",
    ):
        assert expected in names, built
    assert "Requires-Dist: flask" in metadata

    run(tmp_path, sys.executable, "-m", "pip", "install", "--no-deps", "-t", "site", str(wheel))
    env = service_env(tmp_path / "tasks.db", PYTHONPATH=str(tmp_path / "site"))
    shown = run(
        tmp_path,
        sys.executable,
        "-c",
        "import app; served = app.create_app(); print(app.__file__);"
        "print(served.jinja_env.get_template('dashboard/index.html').filename)",
        env=env,
    ).split()
    assert len(shown) == 2
    assert all(Path(path).is_relative_to(tmp_path / "site") for path in shown), shown


def run(cwd: Path, *command: str, env: dict[str, str] | None = None) -> str:
    """Run `command` in `cwd`; return its stdout, failing on a non-zero exit."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
