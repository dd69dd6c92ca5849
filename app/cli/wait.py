"""`flask tasks submit --wait`: poll submitted tasks until they finish or time runs out."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from app.statuses import TERMINAL, Status
from app.storage import database
from app.storage.reads import outcomes

if TYPE_CHECKING:
    from sqlalchemy import Engine

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
    progress = _poll_with_bar(engine, ids, started + timeout_s)
    elapsed = time.monotonic() - started
    counts = Counter(status for status, _ in progress.finished.values())
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if progress.pending:
        unfinished = (
            "the task had not finished"
            if len(ids) == 1
            else f"{len(progress.pending)} of {len(ids)} tasks had not finished"
        )
        click.echo(
            f"error: timeout: {unfinished} after {elapsed:.1f} s"
            + (f" ({summary} so far)" if summary else "")
            + ".",
            err=True,
        )
        for task_id in progress.pending[:MAX_LISTED]:
            click.echo(f"  unfinished {task_id}", err=True)
        return False
    noun = "task" if len(ids) == 1 else "tasks"
    click.echo(f"{len(ids)} {noun} finished in {elapsed:.1f} s: {summary}", err=True)
    failed = [(i, s, e) for i, (s, e) in progress.finished.items() if s != Status.COMPLETED]
    for task_id, status, error in failed[:MAX_LISTED]:
        click.echo(f"  {status} {task_id}" + (f": {error}" if error else ""), err=True)
    return not failed


def _poll_with_bar(engine: Engine, ids: Sequence[str], deadline: float) -> Progress:
    """Poll, drawing a progress bar on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return poll_until_finished(engine, ids, deadline)
    total = len(dict.fromkeys(ids))
    bar: Any = click.progressbar(length=total, label="waiting", show_pos=True, file=sys.stderr)
    with bar:
        return poll_until_finished(engine, ids, deadline, lambda done: bar.update(done - bar.pos))


def poll_until_finished(
    engine: Engine,
    ids: Sequence[str],
    deadline: float,
    on_progress: Callable[[int], None] | None = None,
) -> Progress:
    """Poll the statuses of `ids` until none is unfinished or `deadline` passes.

    `on_progress` hears how many have finished after each poll (for a progress bar).
    """
    progress = Progress(pending=list(dict.fromkeys(ids)))
    delay = FIRST_POLL_S
    while True:
        _poll(engine, progress)
        if on_progress is not None:
            on_progress(len(progress.finished))
        remaining = deadline - time.monotonic()
        if not progress.pending or remaining <= 0:
            return progress
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_POLL_S)


def _poll(engine: Engine, progress: Progress) -> None:
    """Move the pending tasks that have finished (or vanished) to `finished`."""
    seen: set[str] = set()
    with database.read(engine) as conn:
        for task_id, status, error in outcomes(conn, progress.pending):
            seen.add(task_id)
            if status in TERMINAL:
                progress.finished[task_id] = (status, error)
    for task_id in progress.pending:
        if task_id not in seen:
            progress.finished[task_id] = ("MISSING", "The task no longer exists.")
    progress.pending = [i for i in progress.pending if i not in progress.finished]
