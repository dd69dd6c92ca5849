"""Start and stop the service under test: gunicorn as docs/deployment.md deploys it, one worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Client

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Our gunicorn's threads per worker (GUNICORN_THREADS' default), which the baseline app
# of single submissions gets too.
GUNICORN_THREADS = 8
# Every run uses these unless a scenario overrides them; SQLITE_SYNCHRONOUS stays FULL.
BASE_SETTINGS = {
    "TASK_HANDLERS": "bench.noop_handlers",
    "MAX_CONCURRENT_TASKS": "16",
    "SHUTDOWN_GRACE_S": "2",
    "HOST": "127.0.0.1",
}


@dataclass(frozen=True)
class Database:
    """Where the service under test keeps its tasks."""

    kind: str  # "sqlite" or "postgresql"
    url: str
    path: Path | None = None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(db: Database, settings: dict[str, str]) -> dict[str, str]:
    """Return the environment of a service process on `db`."""
    env = {**os.environ, **BASE_SETTINGS, **settings, "DATABASE_URL": db.url}
    env.pop("FLASK_RUN_FROM_CLI", None)
    return env


def migrate(db: Database, settings: dict[str, str] | None = None) -> None:
    """Create the schema with `flask db upgrade`, as docs/deployment.md does."""
    env = service_env(db, settings or {})
    done = subprocess.run(
        [str(BIN / "flask"), "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError("flask db upgrade failed:\n" + done.stderr.decode()[-2000:])


@dataclass
class Server:
    """One gunicorn master with one worker that runs the API and the scheduler."""

    db: Database
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> float:
        """Start gunicorn and wait for a running scheduler; return the seconds it took."""
        self.port = free_port()
        env = service_env(self.db, {**self.settings, "PORT": str(self.port)})
        command = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
        return self._launch(command, env, timeout_s)

    def _launch(self, command: list[str], env: dict[str, str], timeout_s: float) -> float:
        """Run `command` in a session of its own until it answers /health; return the
        seconds that took."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy(started + timeout_s)
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def _wait_healthy(self, deadline: float) -> None:
        client = Client(self.base, timeout=10)
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"gunicorn exited; see {self.log_path}")
                with suppress(OSError, RuntimeError, ValueError):
                    if client.get("/health")["scheduler"]["state"] in ("running", "disabled"):
                        return
                client.close()
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"the server did not become healthy; see {self.log_path}")

    def settings_used(self) -> dict[str, str]:
        """Return the service settings this server runs with, beyond the defaults."""
        return {**BASE_SETTINGS, **self.settings}

    def worker_pid(self) -> int:
        """Return the pid of gunicorn's worker process (the one that runs the scheduler)."""
        assert self.process is not None
        children = _children(self.process.pid)
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {children}")
        return children[0]

    def worker_rss(self) -> int:
        """Return the resident memory of the worker process, in bytes."""
        return rss_bytes(self.worker_pid())

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL if it lingers."""
        if self.process is None:
            return
        stop_group(self.process)
        self.process = None


# The e2e baseline's app, for MinimalServer.
MINIMAL_SERVICE = "bench.minimal_service:app"


@dataclass
class MinimalServer(Server):
    """The single-submission baseline (bench/minimal_app.py), served by gunicorn with the
    same worker class, one worker and the same threads as ours; with `app`, the e2e
    baseline (bench/minimal_service.py) instead, on a database `flask db upgrade` made."""

    app: str = "bench.minimal_app:app"

    def start(self, timeout_s: float = 120.0) -> float:
        """Start gunicorn on the baseline app; return the seconds it took to answer."""
        assert self.db.path is not None
        self.port = free_port()
        env = {**os.environ, "BENCH_MINIMAL_DB": str(self.db.path), "PYTHONPATH": str(ROOT)}
        # Not our gunicorn.conf.py, which gunicorn would read from the working folder.
        command = [str(BIN / "gunicorn"), "-c", os.devnull, "-k", "gthread", "-w", "1"]
        command.append("--no-control-socket")  # as ours: the default path is the host's
        command += ["--threads", str(GUNICORN_THREADS), "-b", f"127.0.0.1:{self.port}"]
        return self._launch([*command, self.app], env, timeout_s)


@dataclass
class SchedulerProcess:
    """`flask scheduler run` on its own, beside a server that only serves the API."""

    db: Database
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it and wait until its scheduler runs (its log says so)."""
        env = service_env(self.db, {})
        deadline = time.monotonic() + timeout_s
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "flask"), "scheduler", "run"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while " running " not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flask scheduler run did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it: SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None:
            stop_group(self.process)
            self.process = None


def stop_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Signal a process started in its own session, and make sure it is gone."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    # Also reap anything the group left behind (a worker outliving its master).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(5)


@contextmanager
def serving(
    db: Database, log_path: Path, settings: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run a server on `db` for the duration of the block, and always stop it."""
    server = Server(db, log_path, settings or {})
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def serving_apart(db: Database, workdir: Path) -> Iterator[Server]:
    """Run the API without a scheduler and `flask scheduler run` beside it, on `db`."""
    server = Server(db, workdir / "server-apart.log", {"SCHEDULER_ENABLED": "false"})
    scheduler = SchedulerProcess(db, workdir / "scheduler-apart.log")
    try:
        server.start()
        scheduler.start()
        yield server
    finally:
        scheduler.stop()
        server.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if path.exists():
        return [int(p) for p in path.read_text().split()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def rss_bytes(pid: int) -> int:
    """Return VmRSS of `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
