"""What the figures were measured on: hardware, software versions, load, code revision."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.server import ROOT


def describe(pg_url: str | None, redis: bool) -> dict[str, Any]:
    """Return the machine and software the run measures, for the header and the JSON."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_mem_total_kib() / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _pg_version(pg_url) if pg_url else None,
        "redis": _redis_version() if redis else None,
        "packages": {name: _version(name) for name in ("gunicorn", "flask", "sqlalchemy", "huey")},
        "revision": _revision(),
        "load_average_at_start": list(os.getloadavg()),
    }
    return info


def header(info: dict[str, Any]) -> str:
    """Return the machine as two lines of text."""
    load = ", ".join(f"{x:.2f}" for x in info["load_average_at_start"])
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
        f"Linux {info['kernel']}; load average at start {load}\n"
        f"Software: Python {info['python']}, SQLite {info['sqlite']}, "
        f"PostgreSQL {info['postgresql'] or '-'}, Redis {info['redis'] or '-'}, "
        f"huey {info['packages']['huey'] or '-'}, gunicorn {info['packages']['gunicorn']}; "
        f"code {info['revision']}"
    )


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_kib() -> int:
    with suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _pg_version(url: str) -> str | None:
    try:
        import psycopg

        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]).split()[0] if row else None
    except Exception:  # no server: no version
        return None


def _redis_version() -> str | None:
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
        return str(client.info("server")["redis_version"])
    except Exception:  # no server: no version
        return None


def _revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "app") else "")


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user and system) the processes `pids` and their finished
    children have used so far; a process that is gone counts nothing."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / tick


def postgres_pids() -> list[int]:
    """Return the pids of this machine's PostgreSQL server processes."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with suppress(OSError):
            if comm.read_text().strip() == "postgres":
                found.append(int(comm.parent.name))
    return found
