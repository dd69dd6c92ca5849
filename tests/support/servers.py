"""Start, signal and reap real server processes (gunicorn, `flask ...`) for the slow tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path
from signal import Signals
from typing import Any

import requests

from app.statuses import TERMINAL
from app.storage import wakeups
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
REQUEST_TIMEOUT_S = 5.0
BATCH_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0

# Settings the service and gunicorn.conf.py read: one inherited from the shell must not
# change what a test runs, so they are dropped. A `.env` file fills in only what the
# environment leaves unset, so those that would break a test are set, empty (the default).
ISOLATED = (
    "PORT",
    "HOST",
    "DATABASE_URL",
    "MAX_CONCURRENT_TASKS",
    "POLLING_INTERVAL",
    "SCHEDULER_ENABLED",
    "SHUTDOWN_GRACE_S",
    "SQLITE_SYNCHRONOUS",
    "CORS_ORIGINS",
    "LEASE_S",
    "RETENTION_DAYS",
    "LOG_FORMAT",
    "WEB_CONCURRENCY",
    "GUNICORN_THREADS",
    "GUNICORN_ACCESS_LOG",
    "GUNICORN_CMD_ARGS",
    "PROMETHEUS_MULTIPROC_DIR",
    "METRICS_PORT",
    "METRICS_HOST",
)
BLANKED = ("API_TOKEN", "MAX_QUEUED_TASKS", "TASK_HANDLERS", "STRICT_TASK_TYPES", "TASK_DATA_DIR")
# No control socket: its default path is per user, shared with every other gunicorn.
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket"]


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Return the first truthy value of `predicate`, or fail after `timeout` seconds."""
    return wait_for(predicate, timeout, what, interval)


def group_alive(pgid: int) -> bool:
    """Tell whether a process of group `pgid` is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields restart after its closing ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def group_pids(pgid: int) -> set[int]:
    """Return the live processes of group `pgid` (empty without /proc)."""
    found = set()
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                found.add(int(entry.name))
    return found


def read_db(path: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Run one query on a SQLite file directly, bypassing the service."""
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, args).fetchall()


def copy_db(source: Path, target: Path) -> None:
    """Copy a SQLite database consistently, whatever its journal holds."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def database_url(db: Path | str) -> str:
    """Return the URL of `db`: a SQLite file's path, or a URL (PostgreSQL) as it is."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


def service_env(db: Path | str, **settings: str) -> dict[str, str]:
    """Return an environment running the service on `db` (a SQLite file or a URL)."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    env.update(
        dict.fromkeys(BLANKED, ""),
        FLASK_APP="wsgi",
        PYTHONUNBUFFERED="1",
        DATABASE_URL=database_url(db),
        POLLING_INTERVAL="100",
        SQLITE_SYNCHRONOUS="NORMAL",
    )
    env.update(settings)
    return env


def run_flask(db: Path | str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run one `flask` command on `db` to completion and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "flask", *args],
        cwd=ROOT,
        env=service_env(db, **settings),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


def run_to_exit(
    argv: list[str], env: dict[str, str], timeout: float = START_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in its own session to its end; past `timeout`, kill its whole group and fail."""
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{argv} still running after {timeout} s:\n{out}{err}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class Server:
    """One process started in its own session, its output going to a log file."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path, port: int | None):
        self.name = name
        self.proc = proc
        self.log_path = log
        self.base_url = f"http://127.0.0.1:{port}" if port else ""
        # The SQLite file it serves, if any.
        self.database: str | None = None

    @property
    def pgid(self) -> int:
        """Return the process group: the session the process leads."""
        return self.proc.pid

    def log(self) -> str:
        """Return what the process has written so far."""
        return self.log_path.read_text(errors="replace")

    # -- HTTP -------------------------------------------------------------------------

    def get(self, path: str) -> requests.Response:
        """Send a GET; a fresh connection each time, so none is kept alive at shutdown."""
        return requests.get(self.base_url + path, timeout=REQUEST_TIMEOUT_S)

    def submit(self, task_id: str, duration_ms: int, *deps: str, **fields: Any) -> dict[str, Any]:
        """Submit one simulated task and return it as the 201 answer showed it."""
        body: dict[str, Any] = {"id": task_id, "type": "simulate", "duration_ms": duration_ms}
        body.update(dependencies=list(deps), **fields)
        resp = requests.post(self.base_url + "/api/tasks", json=body, timeout=REQUEST_TIMEOUT_S)
        assert resp.status_code == 201, f"{task_id}: {resp.status_code} {resp.text}"
        return dict(resp.json())

    def submit_batch(self, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """Submit a whole graph with `POST /api/tasks/batch`; return the 201 answer."""
        url = self.base_url + "/api/tasks/batch"
        resp = requests.post(url, json={"tasks": tasks}, timeout=BATCH_TIMEOUT_S)
        assert resp.status_code == 201, f"batch: {resp.status_code} {resp.text[:500]}"
        return dict(resp.json())

    def all_tasks(self, **filters: str) -> dict[str, dict[str, Any]]:
        """Return every task (optionally filtered), following the pages, keyed by id."""
        params = {"limit": "1000", **filters}
        url: str | None = self.base_url + "/api/tasks"
        found: dict[str, dict[str, Any]] = {}
        while url is not None:
            resp = requests.get(url, params=params, timeout=REQUEST_TIMEOUT_S)
            assert resp.status_code == 200, f"list: {resp.status_code} {resp.text[:500]}"
            found.update((task["id"], task) for task in resp.json())
            url = resp.links.get("next", {}).get("url")
            params = {}  # the next link carries them
        return found

    def task(self, task_id: str) -> dict[str, Any]:
        """Return one task as the API shows it."""
        resp = self.get(f"/api/tasks/{task_id}")
        assert resp.status_code == 200, f"{task_id}: {resp.status_code} {resp.text}"
        return dict(resp.json())

    def wait_status(self, task_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until a task has `status`; fail at once if it ends any other way."""

        def reached() -> dict[str, Any] | None:
            task = self.task(task_id)
            if task["status"] != status and task["status"] in TERMINAL:
                raise AssertionError(f"{task_id} ended {task['status']}, not {status}: {task}")
            return task if task["status"] == status else None

        return dict(poll(reached, timeout, f"{task_id} to be {status}"))

    def wait_ready(self, state: str = "running", timeout: float = START_TIMEOUT_S) -> None:
        """Poll GET /health until the scheduler reports `state`; fail early if the process dies."""

        def ready() -> bool:
            self.assert_alive()
            try:
                resp = self.get("/health")
            except (requests.ConnectionError, requests.Timeout):
                return False
            return resp.status_code == 200 and resp.json()["scheduler"]["state"] == state

        poll(ready, timeout, f"{self.name} to serve with its scheduler {state}")

    def wait_log(self, text: str, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the process has logged `text`; fail early if the process dies."""

        def logged() -> bool:
            self.assert_alive()
            return text in self.log()

        poll(logged, timeout, f"{self.name} to log {text!r}")

    # -- signals and exit ---------------------------------------------------------------

    def assert_alive(self) -> None:
        """Fail if the process has exited."""
        code = self.proc.poll()
        assert code is None, f"{self.name} exited with {code}"

    def signal(self, sig: Signals) -> None:
        """Send `sig` to the process only (for gunicorn: the master)."""
        self.proc.send_signal(sig)

    def signal_group(self, sig: Signals) -> None:
        """Send `sig` to every process of the group, as a terminal or a supervisor does."""
        os.killpg(self.pgid, sig)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process and every process of its group to exit; return its code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s") from None
        poll(lambda: not group_alive(self.pgid), timeout, f"the rest of {self.name}'s group")
        return code

    def kill(self) -> None:
        """SIGKILL the whole group and reap it: no server outlives its test."""
        # Once the group is gone its id may be reused: never signal a stranger.
        if self.proc.poll() is None or group_alive(self.pgid):
            with suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(10)
        poll(lambda: not group_alive(self.pgid), 10, f"{self.name}'s group to die")


class Launcher:
    """Starts servers on one test's files and stops every one of them at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[Server] = []

    def _start(self, name: str, argv: list[str], env: dict[str, str], port: int | None) -> Server:
        log = self.directory / f"{len(self.servers) + 1:02d}-{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name, proc, log, port)
        url = env.get("DATABASE_URL", "")
        if url.startswith("sqlite:///"):
            server.database = url.removeprefix("sqlite:///")
        self.servers.append(server)
        return server

    def gunicorn(
        self, db: Path | str, *, ready: str | None = "running", port: int = 0, **settings: str
    ) -> Server:
        """Start `gunicorn -c gunicorn.conf.py wsgi:app` and wait until it serves.

        `port` 0 picks a free one; `ready` None returns at once, without waiting.
        """
        port = port or free_port()
        env = service_env(db, PORT=str(port), HOST="127.0.0.1", **settings)
        argv = [*GUNICORN, "wsgi:app"]
        server = self._start("gunicorn", argv, env, port)
        if ready is not None:
            server.wait_ready(ready)
        return server

    def make_run(self, db: Path | str, **settings: str) -> Server:
        """Start `make run` (the project's own venv, made by `make install`) and wait until
        its gunicorn serves."""
        port = free_port()
        env = service_env(db, PORT=str(port), HOST="127.0.0.1", **settings)
        server = self._start("make-run", ["make", "--no-print-directory", "run"], env, port)
        server.wait_ready()
        return server

    def flask_run(
        self, db: Path | str, *options: str, ready: str = "running", **settings: str
    ) -> Server:
        """Start `flask run` (Flask's development server) with `options`; wait until it
        serves with its scheduler in state `ready`."""
        port = free_port()
        argv = [sys.executable, "-m", "flask", "run", "--port", str(port), *options]
        server = self._start("flask-run", argv, service_env(db, **settings), port)
        server.wait_ready(ready)
        return server

    def scheduler(self, db: Path | str, **settings: str) -> Server:
        """Start `flask scheduler run` and wait until its signal handlers are in place."""
        return self.schedulers(db, 1, **settings)[0]

    def schedulers(self, db: Path | str, count: int, **settings: str) -> list[Server]:
        """Start `count` copies of `flask scheduler run` at once; wait until every one runs."""
        argv = [sys.executable, "-m", "flask", "scheduler", "run"]
        started = [
            self._start("scheduler", argv, service_env(db, **settings), None) for _ in range(count)
        ]
        for server in started:
            server.wait_log(" running ")
        return started

    def close(self) -> None:
        """Kill whatever is still running and print every log (pytest shows it on failure)."""
        try:
            for server in self.servers:
                server.kill()
        finally:
            for path in {s.database for s in self.servers if s.database is not None}:
                # What a killed scheduler leaves of its wake-up socket (app/storage/wakeups).
                shutil.rmtree(wakeups.directory_of(path), ignore_errors=True)
            for server in self.servers:
                print(f"----- {server.log_path.name} (exit {server.proc.returncode}) -----")
                print(server.log()[-20_000:])
