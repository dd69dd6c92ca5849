"""A handler module for the process tests: `TASK_HANDLERS=tests.support.ledger_handlers`.

The `ledger` type appends `task_id attempt pid start|end wall_time_ns` to the file named by
`LEDGER_PATH`, one line as it starts and one as it ends, then fails when `payload.fail` is
true, or while its attempt number is at most `payload.fail_attempts` (so a task with that
many retries fails first, then completes). With `payload.map: n`, a completing attempt adds
n ledger tasks `<id>.m0`... that depend on it (`added_ids`). Each line is one `os.write`
to a file opened with O_APPEND, so the lines of several processes never interleave. The
ledger records what really ran, independently of the database: the tests compare the two.
"""

from __future__ import annotations

import os
import time

from app.handlers import HandlerFailed, Registry, TaskContext

LEDGER_TYPE = "ledger"


def append(ctx: TaskContext, event: str) -> None:
    """Append one ledger line for `ctx`'s attempt."""
    line = f"{ctx.id} {ctx.attempt} {os.getpid()} {event} {time.time_ns()}\n"
    fd = os.open(os.environ["LEDGER_PATH"], os.O_APPEND | os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def fails_at(payload: dict[str, object], attempt: int) -> bool:
    """Tell whether the ledger handler fails attempt number `attempt` of this payload."""
    if payload.get("fail") is True:
        return True
    first = payload.get("fail_attempts", 0)
    return isinstance(first, int) and not isinstance(first, bool) and attempt <= first


def added_ids(task_id: str, payload: dict[str, object]) -> list[str]:
    """Return the ids of the tasks a completing attempt of this task adds."""
    count = payload.get("map", 0)
    return [f"{task_id}.m{k}" for k in range(count if isinstance(count, int) else 0)]


def ledger(ctx: TaskContext) -> None:
    """Record the start, sleep `duration_ms` (stopping when cancelled), record the end."""
    append(ctx, "start")
    cancelled = ctx.cancel.wait(ctx.duration_ms / 1000)
    append(ctx, "end")
    if cancelled:
        raise HandlerFailed("The ledger task was asked to stop before it finished.")
    if fails_at(ctx.payload, ctx.attempt):
        raise HandlerFailed(f"The ledger task failed by design in attempt {ctx.attempt}.")
    added = added_ids(ctx.id, ctx.payload)
    ctx.add_tasks(
        {"id": child, "type": LEDGER_TYPE, "duration_ms": 5, "dependencies": [ctx.id]}
        for child in added
    )


def register(registry: Registry) -> None:
    """Register the `ledger` type."""
    registry.register(LEDGER_TYPE, ledger)
