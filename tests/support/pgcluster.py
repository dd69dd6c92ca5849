"""A private, throwaway PostgreSQL cluster that a test may restart, stop and crash at will.

The shared server on port 5432 serves every other test run on the machine and must never
be restarted, so a test that restarts PostgreSQL makes its own: `initdb` into a temporary
directory (as the `postgres` OS user, since initdb refuses to run as root), on a free port,
with its socket in that directory, started and stopped with `pg_ctl`.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from contextlib import suppress
from pathlib import Path

import psycopg

from tests.support.servers import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_CTL_TIMEOUT_S = 30
# Settings of a cluster that lives for one test module. fsync off: a process crash (the
# immediate shutdown) loses nothing the kernel has, and no test here survives a power cut.
SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
max_connections = 100
"""


def binaries() -> Path | None:
    """Return the newest PostgreSQL bin directory that has initdb and pg_ctl, if any."""
    found = [Path(d) for d in glob.glob(PG_BIN_GLOB) if os.access(Path(d) / "pg_ctl", os.X_OK)]
    found = [d for d in found if os.access(d / "initdb", os.X_OK)]
    return max(
        found, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)], default=None
    )


def cannot_run() -> str | None:
    """Say why no private cluster can be made here, or None when one can."""
    if os.geteuid() != 0:
        return "a private PostgreSQL cluster needs root (initdb runs as postgres via runuser)"
    if binaries() is None:
        return f"no PostgreSQL binaries under {PG_BIN_GLOB}"
    if shutil.which("runuser") is None:
        return "runuser is not installed"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres OS user to run the cluster"
    return None


class Cluster:
    """One cluster in its own directory; `destroy` stops it and removes every file."""

    def __init__(self) -> None:
        bindir = binaries()
        assert bindir is not None
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="pg-private-", dir="/tmp"))
        shutil.chown(self.base, "postgres", "postgres")
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0

    def _run(self, program: str, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", str(self.bindir / program), *args]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT_S * 2, check=False
        )
        assert done.returncode == 0, f"{program} {args}: {done.stdout}{done.stderr}\n{self.tail()}"

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", *args)

    def create(self) -> None:
        """initdb, then start on a free port (another, should that one be taken meanwhile)."""
        self._run(
            "initdb",
            *("-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"),
            *("--locale=C", "--no-sync", "--no-instructions"),
        )
        config = self.data / "postgresql.conf"
        original = config.read_text()
        for attempt in range(3):
            self.port = free_port()
            config.write_text(original + SETTINGS.format(port=self.port, socket_dir=self.base))
            try:
                self._pg_ctl("start")
                return
            except AssertionError:
                if attempt == 2:
                    raise

    def url(self, database: str = "postgres") -> str:
        """Return a URL of a database of this cluster, as DATABASE_URL takes it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        self._pg_ctl("start")

    def stop(self, mode: str) -> None:
        """Stop the server: `fast` ends every session cleanly, `immediate` is a crash."""
        self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: str) -> None:
        """Stop (`fast` or `immediate`) and start again; return once it accepts connections."""
        self._pg_ctl("-m", mode, "restart")

    def tail(self) -> str:
        """Return the end of the server's log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def destroy(self) -> None:
        """Stop the server however it is, then remove the directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                with suppress(AssertionError, subprocess.TimeoutExpired):
                    self._pg_ctl("-m", "immediate", "stop")
            self._kill_leftover()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_leftover(self) -> None:
        # pg_ctl failed to stop it: the postmaster this cluster started, by its own pid.
        pidfile = self.data / "postmaster.pid"
        with suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
