"""`flask tasks submit --wait`: poll submitted tasks until they finish or time runs out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import click
from sqlalchemy import Engine, select

from . import database
from .models import TERMINAL, Status
from .tables import chunks, tasks

FIRST_POLL_S = 0.05
MAX_POLL_S = 1.0
MAX_LISTED = 20


@dataclass
class Progress:
    """What polling has seen so far: finished tasks and the ids still unfinished."""

    pending: list[str]
    finished: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def wait_and_report(engine: Engine, ids: Sequence[str], timeout_s: float) -> bool:
    """Wait for `ids` to finish, print a summary to stderr; True when all COMPLETED."""
    started = time.monotonic()
    progress = poll_until_finished(engine, ids, started + timeout_s)
    elapsed = time.monotonic() - started
    counts = Counter(status for status, _ in progress.finished.values())
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if progress.pending:
        click.echo(
            f"error: timeout: {len(progress.pending)} of {len(ids)} tasks had not finished "
            f"after {elapsed:.1f} s" + (f" ({summary} so far)" if summary else "") + ".",
            err=True,
        )
        for task_id in progress.pending[:MAX_LISTED]:
            click.echo(f"  unfinished {task_id}", err=True)
        return False
    click.echo(f"{len(ids)} tasks finished in {elapsed:.1f} s: {summary}", err=True)
    failed = [(i, s, e) for i, (s, e) in progress.finished.items() if s != Status.COMPLETED]
    for task_id, status, error in failed[:MAX_LISTED]:
        click.echo(f"  {status} {task_id}" + (f": {error}" if error else ""), err=True)
    return not failed


def poll_until_finished(engine: Engine, ids: Sequence[str], deadline: float) -> Progress:
    """Poll the statuses of `ids` until none is unfinished or `deadline` passes."""
    progress = Progress(pending=list(dict.fromkeys(ids)))
    delay = FIRST_POLL_S
    while True:
        _poll(engine, progress)
        remaining = deadline - time.monotonic()
        if not progress.pending or remaining <= 0:
            return progress
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_POLL_S)


def _poll(engine: Engine, progress: Progress) -> None:
    """Move the pending tasks that have finished (or vanished) to `finished`."""
    seen: set[str] = set()
    with database.read(engine) as conn:
        for part in chunks(progress.pending):
            query = select(tasks.c.id, tasks.c.status, tasks.c.error).where(tasks.c.id.in_(part))
            for task_id, status, error in conn.execute(query):
                seen.add(task_id)
                if status in TERMINAL:
                    progress.finished[task_id] = (status, error)
    for task_id in progress.pending:
        if task_id not in seen:
            progress.finished[task_id] = ("MISSING", "The task no longer exists.")
    progress.pending = [i for i in progress.pending if i not in progress.finished]
