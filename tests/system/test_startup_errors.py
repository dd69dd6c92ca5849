"""A bad setting stops every entry point with one line naming it, exit status 2."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.apps import require_postgres
from tests.support.servers import GUNICORN, free_port, run_to_exit, service_env

BAD_SETTINGS = {
    "MAX_CONCURRENT_TASKS": {"MAX_CONCURRENT_TASKS": "abc"},
    "DATABASE_URL": {"DATABASE_URL": "mysql://db/tasks"},
    "TASK_HANDLERS": {"TASK_HANDLERS": "nosuch.module"},
    "TASK_DATA_DIR": {"TASK_HANDLERS": "app.example_handlers", "TASK_DATA_DIR": "/no/such/dir"},
    "API_TOKEN": {"API_TOKEN": "short"},
    "HOST": {"HOST": "no host"},
    "WEB_CONCURRENCY": {"WEB_CONCURRENCY": "0"},
}
FLASK = [sys.executable, "-m", "flask"]
ENTRY_POINTS = {
    "gunicorn": [*GUNICORN, "wsgi:app"],
    "flask db upgrade": [*FLASK, "db", "upgrade"],
    "flask tasks list": [*FLASK, "tasks", "list"],
    "flask scheduler run": [*FLASK, "scheduler", "run"],
}


def _run(argv: list[str], tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    # A free port: should the setting pass unnoticed, gunicorn starts instead of failing to bind.
    env = service_env(tmp_path / "tasks.db", **{"PORT": str(free_port()), **settings})
    return run_to_exit(argv, env)


def _assert_one_line(done: subprocess.CompletedProcess[str], variable: str) -> str:
    shown = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 2, shown
    assert done.stdout == "", shown
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, shown
    assert variable in lines[0], shown
    return lines[0]


# Every bad setting from gunicorn and a `flask` command; two of them from the other commands.
CASES = [
    *(("gunicorn", variable) for variable in BAD_SETTINGS),
    *(("flask tasks list", variable) for variable in BAD_SETTINGS),
    *(
        (entry, variable)
        for entry in ("flask db upgrade", "flask scheduler run")
        for variable in ("MAX_CONCURRENT_TASKS", "TASK_HANDLERS")
    ),
]


@pytest.mark.parametrize(("entry", "variable"), CASES)
def test_a_bad_setting_prints_one_line_and_exits_2(
    entry: str, variable: str, tmp_path: Path
) -> None:
    done = _run(ENTRY_POINTS[entry], tmp_path, **BAD_SETTINGS[variable])
    assert _assert_one_line(done, variable).startswith(f"error: {variable} ")


@pytest.mark.parametrize("entry", ["gunicorn", "flask tasks list"])
def test_with_log_format_json_the_line_is_json(entry: str, tmp_path: Path) -> None:
    done = _run(ENTRY_POINTS[entry], tmp_path, LOG_FORMAT="json", API_TOKEN="short")
    line = json.loads(_assert_one_line(done, "API_TOKEN"))
    assert line["level"] == "ERROR" and line["message"].startswith("API_TOKEN must be")
    assert "short" not in line["message"]  # the token is a secret, even a bad one


def test_make_run_stops_on_a_short_token(tmp_path: Path) -> None:
    venv = Path(sys.executable).parents[1]
    if not (venv / "bin" / ".installed").exists():
        pytest.skip("the tests do not run in a venv built by `make install`")
    argv = ["make", "-s", "run", f"VENV={venv}", f"PORT={free_port()}"]
    done = run_to_exit(argv, service_env(tmp_path / "tasks.db", API_TOKEN="short"))
    # make adds its own line about the failed recipe, and exits 2 for any failure.
    # Under `make test` it is a sub-make, whose lines start `make[1]: `.
    ours = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(ours) == 1 and ours[0].startswith("error: API_TOKEN must be"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("entry", ["gunicorn", "flask db upgrade"])
def test_a_sqlite_file_in_a_missing_folder_is_a_bad_setting(entry: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "tasks.db"
    done = _run(ENTRY_POINTS[entry], tmp_path, DATABASE_URL=f"sqlite:///{missing}")
    assert "folder that does not exist" in _assert_one_line(done, "DATABASE_URL")


def test_a_database_never_migrated_stops_every_serving_command_with_the_fix(
    tmp_path: Path,
) -> None:
    fix = "run `flask db upgrade` first"
    for entry in ("flask scheduler run", "flask run"):
        argv = ENTRY_POINTS.get(entry, [*FLASK, "run", "--port", str(free_port())])
        assert fix in _assert_one_line(_run(argv, tmp_path), "DATABASE_URL")

    listed = _run(ENTRY_POINTS["flask tasks list"], tmp_path)
    assert listed.returncode == 1 and fix in listed.stderr, listed.stderr

    served = _run(ENTRY_POINTS["gunicorn"], tmp_path)
    assert served.returncode == 3, served.stderr  # gunicorn's own status: a worker could not boot
    assert fix in served.stderr and "Traceback" not in served.stderr, served.stderr


@pytest.mark.parametrize("entry", ["gunicorn", "flask tasks list"])
def test_a_handler_module_with_a_syntax_error_is_one_line(entry: str, tmp_path: Path) -> None:
    (tmp_path / "broken_handlers.py").write_text("def register(registry)\n    pass\n")
    done = _run(
        ENTRY_POINTS[entry], tmp_path, TASK_HANDLERS="broken_handlers", PYTHONPATH=str(tmp_path)
    )
    line = _assert_one_line(done, "TASK_HANDLERS")
    assert "'broken_handlers' failed to import: SyntaxError" in line


def test_gunicorn_on_a_taken_port_stops_at_once_saying_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run(ENTRY_POINTS["gunicorn"], tmp_path, PORT=str(port))
    shown = f"exit {done.returncode}\nstderr:\n{done.stderr}"
    assert done.returncode == 2, shown
    # gunicorn's own "Starting gunicorn" line comes first; no retries, no traceback.
    assert done.stderr.splitlines()[-1] == (
        f"error: PORT {port} on 127.0.0.1 is taken by another server: stop it, or set PORT "
        "(or HOST) to a free one"
    ), shown
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr, shown


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("notahost.invalid", "is neither an address nor a name this machine can resolve"),
        ("999.1.1.1", "is neither an address nor a name this machine can resolve"),
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1, never local
    ],
)
def test_gunicorn_on_a_host_it_cannot_bind_stops_at_once_saying_so(
    tmp_path: Path, host: str, said: str
) -> None:
    """gunicorn tried five times a second apart, logging each, then exited 1."""
    done = _run(ENTRY_POINTS["gunicorn"], tmp_path, HOST=host, PORT="3000")
    shown = f"exit {done.returncode}\nstderr:\n{done.stderr}"
    assert done.returncode == 2, shown
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"error: HOST {host!r}" if "neither" in said else f"error: HOST {host}")
    assert said in last, shown
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr, shown


def test_a_refused_gunicorn_start_leaves_no_metrics_directory(tmp_path: Path) -> None:
    """The master makes one in TMPDIR as it reads gunicorn.conf.py; a start refused then
    (a taken address, a bad setting) removed it only when it had started."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused = _run(ENTRY_POINTS["gunicorn"], tmp_path, PORT=port, TMPDIR=str(temporary))
    assert refused.returncode == 2, refused.stderr
    bad = _run(ENTRY_POINTS["gunicorn"], tmp_path, TMPDIR=str(temporary), LEASE_S="x")
    assert bad.returncode == 2, bad.stderr
    assert list(temporary.iterdir()) == []


def test_gunicorn_on_a_unix_socket_another_server_answers_on_stops_saying_so(
    tmp_path: Path,
) -> None:
    """gunicorn would unlink the path and bind it: the other server ran on, unreachable.
    A stale socket (no one answering) is replaced as before."""
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as taken:
        taken.bind(str(path))
        taken.listen()
        done = _run(ENTRY_POINTS["gunicorn"], tmp_path, GUNICORN_CMD_ARGS=f"--bind unix:{path}")
    shown = f"exit {done.returncode}\nstderr:\n{done.stderr}"
    assert done.returncode == 2, shown
    assert done.stderr.splitlines()[-1] == (
        f"error: the unix socket {path} is served by another server: stop it, or bind another path"
    ), shown
    assert "Traceback" not in done.stderr, shown
    assert path.exists()  # closed, its file left: stale
    stale = _run(ENTRY_POINTS["gunicorn"], tmp_path, GUNICORN_CMD_ARGS=f"--bind unix:{path}")
    assert f"Listening at: unix:{path}" in stale.stderr, stale.stderr


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("user", "database", "said"),
    [
        ("postgres", "no_such_db_here", "-U postgres no_such_db_here`)"),
        ("no_such_role_here", "test", "create the role no_such_role_here"),
    ],
)
def test_a_migration_the_server_refuses_says_what_to_create(
    tmp_path: Path, user: str, database: str, said: str
) -> None:
    """It said "check the address, or start the database" of a server that answered."""
    server = require_postgres().rsplit("@", 1)[1].split("/", 1)[0]
    url = f"postgresql://{user}@{server}/{database}"
    done = _run(ENTRY_POINTS["flask db upgrade"], tmp_path, DATABASE_URL=url)
    line = _assert_one_line(done, "DATABASE_URL")
    assert said in line and "check the address" not in line, line


def test_a_database_that_cannot_be_reached_stops_the_migration_with_one_line(
    tmp_path: Path,
) -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/tasks"
    done = _run(ENTRY_POINTS["flask db upgrade"], tmp_path, DATABASE_URL=unreachable)
    assert "cannot connect to the database" in _assert_one_line(done, "DATABASE_URL")
