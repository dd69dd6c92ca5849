"""Peers measured on this machine in the same run: Huey on SQLite, and on Redis.

Huey's consumer runs as its own process with 4 worker threads (`-k thread -w 4`), polling
an empty queue every 10 to 100 ms (`-d 0.01 -m 0.1`; Redis blocks on BRPOP instead), quiet
(`-q`: no log line per task, like our service). The producer is this process.
- e2e: enqueue N no-op tasks one by one; time from the first enqueue to the last finish;
- chain: one pipeline of N tasks (`.then`); per hop = (last finish - first start)/(N-1);
- work: as e2e, with tasks that sleep 1 ms, on 16 threads (`-w 16`, as our cap of 16).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import count
from pathlib import Path
from typing import Any

from bench.huey_app import HueyConfig, build
from bench.server import BIN, ROOT, stop_group

CONSUMER_ARGS = ["-k", "thread", "-w", "4", "-d", "0.01", "-m", "0.1", "-q"]
# Huey's threads for tasks of real work: as many as our MAX_CONCURRENT_TASKS.
WORK_THREADS = 16
TIMEOUT_S = 600.0
_RUNS = count()


def redis_available() -> bool:
    """Tell whether the Redis server on 127.0.0.1:6379 answers."""
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping())
    except Exception:  # any failure means: no Redis figures this run
        return False


def _config(backend: str, workdir: Path, expect: int) -> HueyConfig:
    run = f"{os.getpid()}-{next(_RUNS)}"
    return HueyConfig(
        backend=backend,
        name=f"bench-{run}",
        path=str(workdir / f"huey-{run}.db") if backend == "sqlite" else "",
        expect=expect,
        done=str(workdir / f"huey-{run}.done"),
    )


def _wait_file(path: str, timeout_s: float, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(FileNotFoundError):
            text = Path(path).read_text()
            if text:
                return text
        if process.poll() is not None:
            raise RuntimeError("the huey consumer exited")
        time.sleep(0.01)
    raise TimeoutError(f"huey did not finish within {timeout_s:.0f} s")


@contextmanager
def _consumer(
    config: HueyConfig, huey: Any, warm: Any, log: Path, threads: int | None = None
) -> Iterator[Any]:
    env = {**os.environ, **config.env(), "PYTHONPATH": str(ROOT)}
    args = list(CONSUMER_ARGS)
    if threads is not None:
        args[args.index("-w") + 1] = str(threads)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(BIN / "huey_consumer"), "bench.huey_app.huey", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        warm()
        _wait_file(config.done + ".warm", 60, process)
        yield process
    finally:
        stop_group(process, grace_s=5)
        with suppress(Exception):  # Redis keeps nothing of a finished run
            huey.storage.flush_all()


def e2e(
    backend: str, workdir: Path, n: int, timeout_s: float = TIMEOUT_S, work: bool = False
) -> dict[str, Any]:
    """Enqueue `n` no-op tasks (with `work`, tasks of 1 ms on WORK_THREADS threads); time
    the first enqueue to the last finish."""
    config = _config(backend, workdir, n)
    huey, noop, _, warm, one_ms = build(config)
    task, threads = (one_ms, WORK_THREADS) if work else (noop, None)
    with _consumer(config, huey, warm, workdir / "huey.log", threads) as process:
        started = time.time()
        for _ in range(n):
            task()
        enqueue_s = time.time() - started
        record = json.loads(_wait_file(config.done, timeout_s, process))
    wall = record["last_finish"] - started
    return {"tasks": n, "enqueue_s": enqueue_s, "wall_s": wall, "tasks_per_s": n / wall}


def chain(backend: str, workdir: Path, n: int, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Run one `n`-task pipeline; per hop = (last finish - first start)/(n-1)."""
    config = _config(backend, workdir, n)
    huey, _, hop, warm, _ = build(config)
    # Linked from the tail: `.then()` walks the pipeline recursively at every call.
    head = hop.s()
    for _ in range(n - 1):
        head = replace_head(hop.s(), head)
    with _consumer(config, huey, warm, workdir / "huey.log") as process:
        huey.enqueue(head)
        record = json.loads(_wait_file(config.done, timeout_s, process))
    wall = record["last_finish"] - record["first_start"]
    return {"tasks": n, "wall_s": wall, "per_hop_ms": wall * 1000 / (n - 1)}


def replace_head(task: Any, rest: Any) -> Any:
    """Make `task` run `rest` when it completes; return `task`."""
    task.on_complete = rest
    return task
