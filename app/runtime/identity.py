"""Who this process is, and whether another process on this host is still alive."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def host_key() -> str:
    """Name this host and PID namespace, so pids are only compared where they mean the same."""
    boot = _read("/proc/sys/kernel/random/boot_id")[:8]
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return ":".join(part for part in (socket.gethostname(), boot, namespace) if part)[:255]


def start_time(pid: int) -> str | None:
    """Return the kernel's start time of `pid`, or None when it is unknown or gone."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name may hold spaces or parentheses; fields restart after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None  # a zombie has exited; only its exit status is left
    return fields[19]


def is_alive(pid: int, started: str | None) -> bool:
    """Tell whether `pid` is the same live process that registered with `started`."""
    if Path("/proc/self/stat").exists():
        current = start_time(pid)
        return current is not None and (started is None or current == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
