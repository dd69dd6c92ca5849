"""`flask schedules ...`: create, list, show, pause, resume, delete and fire schedules.

Like `flask tasks`, these commands talk to the database directly; any running instance
(a server or `flask scheduler run`) fires what they create within a second.
"""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup

from app import parts
from app.cli.tasks import clean_errors, echo_json, quiet_logs, read_body, table
from app.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from app.services import schedules

schedules_cli = AppGroup(
    "schedules",
    help="Create, list, show, pause, resume, delete and fire recurring schedules.",
    callback=quiet_logs,
)
LIST_COLUMNS = ("ID", "WHEN", "PAUSED", "NEXT", "LAST", "FIRED", "SKIPPED", "MISSED", "FAILED")


@schedules_cli.command("create", short_help="Create a schedule from a JSON file.")
@click.argument("file")
@clean_errors
def create(file: str) -> None:
    """Create the schedule in FILE (`-` for stdin), the body of POST /api/schedules;
    print it as JSON. The same id and body again is a replay, not an error."""
    body, _ = read_body(file)
    spec = schedules.parse_new(body, parts.admission())
    created = schedules.create(parts.engine(), spec)
    echo_json(schedules.shape(created.schedule))
    if not created.created:
        click.echo(f"schedule {spec['id']} already exists with this body", err=True)


@schedules_cli.command("list")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
)
@click.option("--cursor", help="Continue after this schedule id.")
@clean_errors
def list_schedules(limit: int, cursor: str | None) -> None:
    """Print a table of schedules by id, with their next and last firings."""
    page = schedules.listing(parts.engine(), cursor, limit)
    if not page:
        click.echo("no schedules found", err=True)
        return
    click.echo(table(list(LIST_COLUMNS), [_row(schedules.shape(row)) for row in page]))
    if len(page) == limit:
        click.echo(f"more schedules: --cursor {page[-1]['id']}", err=True)


def _row(shown: dict[str, Any]) -> list[str]:
    when = shown["cron"] or f"every {shown['interval_s']} s"
    if shown["cron"] and shown["timezone"] != "UTC":
        when += f" ({shown['timezone']})"
    last = shown["last_firing"]
    counts = shown["counts"]
    return [
        shown["id"],
        when,
        "yes" if shown["paused"] else "no",
        shown["next_firings"][0] if shown["next_firings"] else "-",
        f"{last['at'] or '-'} {last['outcome']}" if last else "-",
        *(str(counts[k]) for k in ("fired", "skipped", "missed", "failed")),
    ]


@schedules_cli.command("show", short_help="Print one schedule as JSON.")
@click.argument("schedule_id", metavar="ID")
@clean_errors
def show(schedule_id: str) -> None:
    """Print one schedule, with its next five firings and its last one, as JSON."""
    echo_json(schedules.shape(schedules.get(parts.engine(), schedule_id)))


@schedules_cli.command("pause", short_help="Stop a schedule firing.")
@click.argument("schedule_id", metavar="ID")
@clean_errors
def pause(schedule_id: str) -> None:
    """Pause a schedule: it fires no more until resumed."""
    _edit(schedule_id, {"paused": True})


@schedules_cli.command("resume", short_help="Let a paused schedule fire again.")
@click.argument("schedule_id", metavar="ID")
@clean_errors
def resume(schedule_id: str) -> None:
    """Resume a schedule: its next firing counts from now (a pause's instants are not run)."""
    _edit(schedule_id, {"paused": False})


def _edit(schedule_id: str, changes: dict[str, Any]) -> None:
    edited = schedules.edit(parts.engine(), schedule_id, changes, parts.admission())
    echo_json(schedules.shape(edited))


@schedules_cli.command("delete", short_help="Delete a schedule.")
@click.argument("schedule_id", metavar="ID")
@clean_errors
def delete(schedule_id: str) -> None:
    """Delete a schedule; the tasks its firings created stay."""
    schedules.delete(parts.engine(), schedule_id)
    click.echo(f"deleted schedule {schedule_id}", err=True)


@schedules_cli.command("fire-due", short_help="Fire what is due now, once.")
@clean_errors
def fire_due() -> None:
    """Fire every schedule that is due now, as an instance's firer does each second, and
    print what was done. Safe beside running instances: no instant fires twice."""
    report = schedules.fire_due(parts.engine(), admission=parts.admission())
    echo_json(
        {
            "fired": [
                {"schedule": s, "at": schedules.iso(i), "tasks": n} for s, i, n in report.fired
            ],
            "skipped": [{"schedule": s, "at": schedules.iso(i)} for s, i in report.skipped],
            "missed": [{"schedule": s, "count": n} for s, n in report.missed],
            "failed": [
                {"schedule": s, "at": schedules.iso(i), "code": c} for s, i, c in report.failed
            ],
        }
    )
