"""`flask tasks ...`: submit, inspect, change, cancel, retry, delete and prune tasks, and
act on whole batches, from a shell.

These commands talk to the database directly and never start a scheduler; a running
server or `flask scheduler run` picks their work up at its next polling tick.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import SQLAlchemyError

from app import events, parts
from app.cli.wait import wait_and_report
from app.errors import ApiError, BodyTooLarge
from app.jsonbody import parse_json_object
from app.limits import DEFAULT_PAGE_SIZE, MAX_BATCH_BYTES, MAX_BODY_BYTES, MAX_PAGE_SIZE
from app.schemas import BatchSummaryOut, TaskOut, load_task, load_task_edit
from app.services import actions, batch, batches, instances, reads, submissions
from app.startup import UNMIGRATED
from app.statuses import TERMINAL, Status
from app.storage import retention
from app.storage.dbfaults import database_error
from app.storage.health import schema_problem

P = ParamSpec("P")
R = TypeVar("R")

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
DURATION = re.compile(r"^(\d{1,10})([smhd]?)$")
MAX_DURATION = timedelta(days=36_500)
MAX_DETAIL_LINES = 20
MAX_DETAIL_TEXT = 200
LIST_COLUMNS = ("id", "type", "status", "attempts", "finished_at")


def quiet_logs() -> None:
    """Log only warnings and errors while a command runs: it prints its own result.

    The task state-change lines (INFO, from `app.events`) belong in a server's or a
    scheduler's log; on an operator's terminal they would only repeat the result.
    """
    context = click.get_current_context()
    for logger in map(logging.getLogger, ("app", events.LOGGER)):
        context.call_on_close(functools.partial(logger.setLevel, logger.level))
        logger.setLevel(logging.WARNING)


tasks_cli = AppGroup(
    "tasks",
    help="Submit, inspect, change, cancel, retry, delete and prune tasks; act on batches.",
    callback=quiet_logs,
)
task_out = TaskOut()


class Duration(click.ParamType):
    """A length of time: `90` or `90s` seconds, `30m`, `12h`, `7d`."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        """Return `value` as a timedelta, or fail with a usage error."""
        if isinstance(value, timedelta):
            return value
        match = DURATION.match(str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a duration like 90, 90s, 30m, 12h or 7d.", param, ctx)
        seconds = int(match.group(1)) * UNITS[match.group(2)]
        if seconds > MAX_DURATION.total_seconds():
            self.fail(f"{value!r} is longer than {MAX_DURATION.days} days.", param, ctx)
        return timedelta(seconds=seconds)


class AnyCase(click.Choice):
    """Upper-case choices given in any case; the error lists them as the API writes them."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        """Compare in upper case."""
        return super().convert(value.upper() if isinstance(value, str) else value, param, ctx)


class AnyCaseList(AnyCase):
    """Several of the choices, comma-separated, in any case; each once, in their order."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        """Check each name as the choice would."""
        if not isinstance(value, str):
            return value
        names = [name for name in value.split(",") if name.strip()]
        if not names:
            self.fail("give at least one name", param, ctx)
        one = super().convert
        return tuple(dict.fromkeys(one(name.strip(), param, ctx) for name in names))

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        """Name the choices, and that several may be given."""
        return "[" + "|".join(self.choices) + "][,...]"


def fail(code: str, message: str, details: dict[str, Any] | None = None) -> NoReturn:
    """Print `error: <code>: <message>` (and any details) to stderr and exit 1."""
    click.echo(f"error: {code}: {message}", err=True)
    for name, value in list((details or {}).items())[:MAX_DETAIL_LINES]:
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > MAX_DETAIL_TEXT:
            text = text[:MAX_DETAIL_TEXT] + "..."
        click.echo(f"  {name}: {text}", err=True)
    raise click.exceptions.Exit(1)


def clean_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors an operator can act on into one line on stderr and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        behind = schema_problem(parts.engine())
        if behind is not None and behind != UNMIGRATED:
            fail("database_error", behind)  # an older version's schema: nothing may run
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            fail(exc.code, exc.message, exc.details)
        except SQLAlchemyError as exc:
            problem = schema_problem(parts.engine())
            if problem is not None:  # never migrated: what failed was the missing tables
                fail("database_error", problem)
            known = database_error(exc)  # the same code and advice an API client gets
            if known is not None:
                fail(known.code, known.message)
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            fail("database_error", cause[0] if cause else type(exc).__name__)

    return wrapper


def echo_json(value: Any) -> None:
    """Print `value` as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2))


def read_body(path: str) -> tuple[dict[str, Any], int]:
    """Return the JSON object in `path` (`-` for stdin) and its size in bytes."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_BATCH_BYTES + 1)
        else:
            with open(path, "rb") as file:
                raw = file.read(MAX_BATCH_BYTES + 1)
    except OSError as exc:
        fail("invalid_file", f"Cannot read {path}: {exc.strerror or exc}.")
    # Parsed as a request body is, so the CLI refuses exactly what the API refuses.
    return parse_json_object(raw, MAX_BATCH_BYTES), len(raw)


@tasks_cli.command("submit", short_help="Submit a task or a graph from a JSON file.")
@click.argument("file")
@click.option("--wait", is_flag=True, help="Wait until every submitted task has finished.")
@click.option(
    "--timeout",
    type=Duration(),
    default="1h",
    show_default=True,
    help="With --wait: give up (exit 1) after this long.",
)
@clean_errors
def submit(file: str, wait: bool, timeout: timedelta) -> None:
    """Submit a task, or a graph as {"tasks": [...]}, from a JSON FILE (- for stdin)."""
    body, size = read_body(file)
    shown, ids, created = submit_graph(body) if "tasks" in body else submit_one(body, size)
    if not created:
        click.echo("note: an identical submission already existed; nothing new stored", err=True)
    if _unfinished(shown):
        _note_if_no_scheduler(_waiting(shown), wait)
    if not wait:
        echo_json(shown)
        return
    try:
        completed = wait_and_report(parts.engine(), ids, timeout.total_seconds())
    except KeyboardInterrupt:
        # Only the wait stops: what was submitted is stored and runs on.
        what = "task is stored and goes" if len(ids) == 1 else f"{len(ids)} tasks are stored and go"
        click.echo(
            f"\nstopped waiting; the {what} on without it (`flask tasks show {ids[0]}`)",
            err=True,
        )
        raise click.exceptions.Exit(130) from None
    now = as_now(shown, ids)
    echo_json(now)  # what the wait ended on, not what was submitted
    if not completed:
        if _unfinished(now):
            _note_if_no_scheduler()  # timed out: why, if that is why
        raise click.exceptions.Exit(1)


def _unfinished(shown: dict[str, Any]) -> bool:
    return any(t["status"] not in TERMINAL for t in shown.get("tasks", [shown]))


def _note_if_no_scheduler(
    waiting_tasks: Iterable[tuple[str, str]] = (), waiting: bool = True
) -> None:
    """Say so on stderr when no scheduler running on this database claims some of the
    (type, queue) of the tasks waiting, and (when `waiting`) when none is running at all:
    those will not start before one does. Registered ones silent for longer than their
    lease are said to be silent, not gone (the next scheduler to look removes them)."""
    lease_s = current_app.config["LEASE_S"]
    listed = instances.listing(parts.engine(), lease_s)
    states = {instance["state"] for instance in listed}
    if "running" in states:
        running = [i for i in listed if i["state"] == "running"]
        unclaimed = sorted(
            {t for t, q in waiting_tasks if not any(_claims(i, t, q) for i in running)}
        )
        if unclaimed:
            named = ", ".join(repr(t) for t in unclaimed[:5])
            click.echo(
                f"note: no running scheduler claims {named} in its queue: those tasks wait "
                "until one does (TASK_HANDLERS, SCHEDULER_QUEUES of the service or of "
                "`flask scheduler run`)",
                err=True,
            )
        return
    if not waiting:
        return
    wait = (
        "the tasks wait until one starts (the service with its scheduler, or `flask scheduler run`)"
    )
    if not states:
        click.echo(f"note: no scheduler is registered on this database; {wait}", err=True)
    elif "stale" in states:
        # True of every one of them: each has been silent longer than its own lease.
        silent = min(i["lease_s"] or lease_s for i in listed if i["state"] == "stale")
        click.echo(
            f"note: no scheduler of this database has sent a heartbeat in the last {silent} s"
            f" (LEASE_S) but to say it is stopping; if none is running, {wait}",
            err=True,
        )
    else:
        click.echo(f"note: the schedulers of this database are stopping; {wait}", err=True)


def _claims(instance: dict[str, Any], task_type: str, queue: str) -> bool:
    """Tell whether `instance` claims tasks of this type in this queue (None: every one)."""
    types, queues = instance["types"], instance["queues"]
    return (types is None or task_type in types) and (queues is None or queue in queues)


def _waiting(shown: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the (type, queue) of the tasks shown that have not ended."""
    listed = shown.get("tasks", [shown])
    return [(t["type"], t["queue"]) for t in listed if t["status"] not in TERMINAL]


def as_now(shown: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """Return what `submit` printed, its tasks as they are now."""
    now = task_out.dump(reads.get_tasks(parts.engine(), ids), many=True)
    if "tasks" in shown:
        return {"batch_id": shown["batch_id"], "tasks": now}
    return now[0] if now else shown


def submit_graph(body: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """Store a batch as the API does; return what to print, its ids, and if it is new."""
    submitted = batch.submit_batch(parts.engine(), body, parts.admission())
    shown = {"batch_id": submitted.batch_id, "tasks": task_out.dump(submitted.tasks, many=True)}
    return shown, [t["id"] for t in submitted.tasks], submitted.created


def submit_one(body: dict[str, Any], size: int) -> tuple[dict[str, Any], list[str], bool]:
    """Store one task as the API does; return what to print, its id, and if it is new."""
    if size > MAX_BODY_BYTES:
        raise BodyTooLarge(f"A single task is limited to {MAX_BODY_BYTES} bytes.")
    data = load_task(body)
    submitted = submissions.submit(parts.engine(), data, parts.admission())
    return task_out.dump(submitted.task), [submitted.task["id"]], submitted.created


@tasks_cli.command("show", short_help="Print one task as JSON.")
@click.argument("task_id", metavar="ID")
@clean_errors
def show(task_id: str) -> None:
    """Print one task, with its payload and result, as JSON."""
    echo_json(task_out.dump(reads.get_task(parts.engine(), task_id)))


@tasks_cli.command("list")
@click.option(
    "--status",
    "statuses",
    type=AnyCaseList([s.value for s in Status]),
    multiple=True,
    help="Only tasks in these statuses (comma-separated, or the option again; any case).",
)
@click.option("--type", "task_type", help="Only tasks of this type.")
@click.option("--batch-id", help="Only tasks of this batch.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
)
@click.option("--cursor", help="Continue where the previous page ended.")
@clean_errors
def list_tasks(
    statuses: tuple[tuple[str, ...], ...],
    task_type: str | None,
    batch_id: str | None,
    limit: int,
    cursor: str | None,
) -> None:
    """Print a table of tasks, newest first."""
    page = reads.list_tasks(
        parts.engine(),
        statuses=tuple(dict.fromkeys(s for given in statuses for s in given)),
        task_type=task_type,
        batch_id=batch_id,
        limit=limit,
        cursor=cursor,
    )
    if not page.tasks:
        click.echo("no tasks found", err=True)
        return
    rows = [_row(task) for task in page.tasks]
    click.echo(table([c.upper() for c in LIST_COLUMNS], rows))
    if page.next_cursor is not None:
        click.echo(f"more tasks: --cursor {page.next_cursor}", err=True)


def _row(task: dict[str, Any]) -> list[str]:
    shown = TaskOut(only=LIST_COLUMNS).dump(task)
    return ["-" if shown[c] is None else str(shown[c]) for c in LIST_COLUMNS]


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


@tasks_cli.command("cancel", short_help="Cancel a task and its dependents.")
@click.argument("task_id", metavar="ID")
@clean_errors
def cancel(task_id: str) -> None:
    """Cancel a QUEUED task, or ask a RUNNING one to stop; print the task."""
    echo_json(task_out.dump(actions.cancel(parts.engine(), task_id)))


@tasks_cli.command("retry", short_help="Requeue a FAILED, UPSTREAM_FAILED or CANCELLED task.")
@click.argument("task_id", metavar="ID")
@clean_errors
def retry(task_id: str) -> None:
    """Put a FAILED, UPSTREAM_FAILED or CANCELLED task back in the queue; print the task."""
    echo_json(task_out.dump(actions.retry(parts.engine(), task_id)))


@tasks_cli.command("edit", short_help="Change a QUEUED task.")
@click.argument("task_id", metavar="ID")
@click.option("--priority", type=int, help="-1000..1000.")
@click.option("--run-at", help="An ISO 8601 time; 'none' to start as soon as it may.")
@click.option("--queue", help="The queue whose pause and limits govern it.")
@clean_errors
def edit(task_id: str, priority: int | None, run_at: str | None, queue: str | None) -> None:
    """Change a QUEUED task's priority, run_at or queue, as PATCH /api/tasks/<id> does;
    print the task."""
    wanted: dict[str, Any] = {"priority": priority, "queue": queue}
    body = {name: value for name, value in wanted.items() if value is not None}
    if run_at is not None:
        body["run_at"] = None if run_at.lower() == "none" else run_at
    if not body:
        raise click.UsageError("give what to change: --priority, --run-at or --queue")
    echo_json(task_out.dump(actions.edit(parts.engine(), task_id, load_task_edit(body))))


@tasks_cli.command("delete", short_help="Delete a finished task.")
@click.argument("task_id", metavar="ID")
@click.option(
    "--with-dependents", is_flag=True, help="Delete every task below it too (all finished)."
)
@clean_errors
def delete(task_id: str, with_dependents: bool) -> None:
    """Delete a finished task once every task depending on it COMPLETED, as DELETE
    /api/tasks/<id> does; print the ids deleted."""
    for deleted in actions.delete(parts.engine(), task_id, with_dependents=with_dependents):
        click.echo(deleted)


@tasks_cli.command("batch", short_help="Show, cancel or retry a whole batch.")
@click.argument("action", type=click.Choice(["show", "cancel", "retry"]))
@click.argument("batch_id", metavar="BATCH_ID")
@clean_errors
def batch_action(action: str, batch_id: str) -> None:
    """Show a batch's counts and state, or cancel or retry every task of it, as
    /api/batches/<id> does; print the batch as JSON."""
    run = {"show": batches.summary, "cancel": batches.cancel, "retry": batches.retry}[action]
    echo_json(BatchSummaryOut().dump(run(parts.engine(), batch_id)))


@tasks_cli.command("prune", short_help="Delete old finished tasks.")
@click.option(
    "--older-than",
    type=Duration(),
    help="Delete tasks finished longer ago than this (90, 90s, 30m, 12h, 7d). "
    "Default: RETENTION_DAYS days.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking (needed off a terminal).")
@clean_errors
def prune(older_than: timedelta | None, dry_run: bool, yes: bool) -> None:
    """Delete finished tasks older than a cut-off, keeping any an unfinished task needs.

    Asks before deleting; off a terminal (cron, a script) it needs --yes.
    """
    if older_than is None:
        days = current_app.config["RETENTION_DAYS"]
        if days == 0:
            click.echo("RETENTION_DAYS is 0, so every task is kept; pass --older-than to prune.")
            return
        older_than = timedelta(days=days)
    age = _human(older_than)
    counts = retention.count_prunable(parts.engine(), older_than)
    total = sum(counts.values())
    if total == 0:
        click.echo(f"nothing to prune: no finished task older than {age}")
        return
    if dry_run:
        by_status = ", ".join(f"{n} {status}" for status, n in counts.items())
        click.echo(f"would prune up to {_tasks(total)} older than {age}: {by_status}")
        return
    if not yes:
        question = f"Delete up to {_tasks(total)} older than {age}?"
        if not stdin_is_terminal():
            raise click.UsageError(
                f"no terminal to confirm deleting up to {_tasks(total)} older than {age}: "
                "pass --yes to delete them, or --dry-run to only count them."
            )
        if not click.confirm(question, err=True):
            click.echo("nothing deleted", err=True)
            raise click.exceptions.Exit(1)
    deleted = retention.prune(parts.engine(), older_than)
    click.echo(f"pruned {_tasks(deleted)} older than {age}")


def stdin_is_terminal() -> bool:
    """Tell whether someone at a terminal can answer a question."""
    return sys.stdin.isatty()


def _tasks(count: int) -> str:
    return f"{count} finished {'task' if count == 1 else 'tasks'}"


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
