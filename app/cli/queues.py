"""`flask queues ...`: list queues, set their limits, pause, resume and delete them.

Like `flask tasks`, these commands talk to the database directly; every running
instance honours a change at its next claim.
"""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup

from app import parts
from app.cli.tasks import clean_errors, echo_json, quiet_logs, table
from app.schemas import QueueOut, load_queue_limits
from app.services import queues
from app.statuses import Status

queues_cli = AppGroup(
    "queues",
    help="List queues, set their concurrency and rate limits, pause, resume and delete them.",
    callback=quiet_logs,
)
queue_out = QueueOut()
# The tasks of each status, in the statuses' order; UPSTREAM_FAILED is shortened.
STATUS_COLUMNS = {s.value: "UPSTREAM" if s is Status.UPSTREAM_FAILED else s.value for s in Status}
LIST_COLUMNS = ("NAME", "STATE", "LIMIT", "RATE/S", *STATUS_COLUMNS.values())


@queues_cli.command("list")
@clean_errors
def list_queues() -> None:
    """Print a table of every queue: its state, limits and tasks by status."""
    click.echo(table(list(LIST_COLUMNS), [_row(q) for q in queues.listing(parts.engine())]))


def _row(queue: dict[str, Any]) -> list[str]:
    counts = queue["counts"]
    limit, rate = queue["concurrency_limit"], queue["rate_limit_per_s"]
    return [
        queue["name"],
        queue["state"],
        "-" if limit is None else str(limit),
        "-" if rate is None else f"{rate:g}",
        *(str(counts.get(status, 0)) for status in STATUS_COLUMNS),
    ]


@queues_cli.command("show", short_help="Print one queue as JSON.")
@click.argument("name")
@clean_errors
def show(name: str) -> None:
    """Print the queue NAME as JSON, as GET /api/queues/<name> shows it."""
    echo_json(queue_out.dump(queues.get(parts.engine(), name)))


@queues_cli.command("set", short_help="Set a queue's limits.")
@click.argument("name")
@click.option("--concurrency-limit", type=int, help="RUNNING tasks at most (default: none).")
@click.option("--rate-limit", type=float, help="Starts per second at most (default: none).")
@clean_errors
def set_limits(name: str, concurrency_limit: int | None, rate_limit: float | None) -> None:
    """Set the limits of the queue NAME, as PUT /api/queues/<name> does: a limit left
    out is none. Print the queue."""
    queues.check_name(name)
    limits = load_queue_limits(
        {"concurrency_limit": concurrency_limit, "rate_limit_per_s": rate_limit}
    )
    echo_json(queue_out.dump(queues.set_limits(parts.engine(), name, limits).queue))


@queues_cli.command("pause", short_help="Stop a queue starting tasks.")
@click.argument("name")
@clean_errors
def pause(name: str) -> None:
    """Stop the queue NAME starting tasks (its running ones go on); print the queue."""
    echo_json(queue_out.dump(queues.pause(parts.engine(), name).queue))


@queues_cli.command("resume", short_help="Let a paused queue start tasks again.")
@click.argument("name")
@clean_errors
def resume(name: str) -> None:
    """Let the queue NAME start tasks again; print the queue."""
    echo_json(queue_out.dump(queues.resume(parts.engine(), name).queue))


@queues_cli.command("delete", short_help="Delete an empty queue.")
@click.argument("name")
@clean_errors
def delete(name: str) -> None:
    """Delete the queue NAME, which must hold no task and be named by no schedule."""
    queues.delete(parts.engine(), name)
    click.echo(f"deleted queue {name}", err=True)
