"""Flask commands for operators: `flask scheduler run`, `flask tasks ...` and
`flask schedules ...`."""

from __future__ import annotations

import logging
from functools import partial

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from app import parts
from app.cli.metrics_endpoint import MetricsEndpoint
from app.cli.queues import queues_cli
from app.cli.schedules import schedules_cli
from app.cli.tasks import tasks_cli
from app.config import ConfigError, queue_names
from app.services.health import report
from app.startup import fail
from app.storage.health import schema_problem

log = logging.getLogger(__name__)

scheduler_cli = AppGroup("scheduler", help="Run the task scheduler without the HTTP API.")


@scheduler_cli.command("run")
@click.option(
    "--queues",
    "served",
    metavar="A,B",
    help="Claim only from these queues (comma-separated); default: SCHEDULER_QUEUES, or all.",
)
def run_scheduler(served: str | None) -> None:
    """Execute tasks until SIGTERM or SIGINT, then drain and exit 0.

    Its lines are log lines (stderr; JSON with LOG_FORMAT=json), like a server's.
    """
    from app.runtime.shutdown import GracefulStop, leave_lingering_handlers

    problem = schema_problem(parts.engine())
    if problem is not None:
        fail(ConfigError(problem))
    scheduler = parts.scheduler()
    if served is not None:
        try:
            scheduler.queues = list(queue_names("--queues", served))
        except ConfigError as exc:
            fail(exc)
    endpoint = _metrics_endpoint()
    stop = GracefulStop(scheduler, current_app.config["SHUTDOWN_GRACE_S"])
    stop.install()
    scheduler.start()
    stop.start()
    if scheduler.id is None:
        log.info("scheduler waiting for the database: %s", scheduler.unregistered_because)
    else:
        serves = ", ".join(scheduler.queues) if scheduler.queues else "every queue"
        log.info(
            "scheduler %s running %s slots, serving %s",
            scheduler.id,
            scheduler.max_concurrent,
            serves,
        )
    if endpoint is not None:
        log.info("metrics at %s", endpoint.url)
    stop.wait()
    if endpoint is not None:
        endpoint.close()
    log.info("scheduler stopped")
    leave_lingering_handlers(scheduler)


def _metrics_endpoint() -> MetricsEndpoint | None:
    """Serve the metrics on METRICS_HOST:METRICS_PORT when a port is set; exit 2 if taken."""
    config = current_app.config
    port = config["METRICS_PORT"]
    if port is None:
        return None
    host = config["METRICS_HOST"]
    token = config["API_TOKEN"] if config["AUTH_OPS_ROUTES"] else ""
    try:
        engine, scheduler = parts.engine(), parts.scheduler()
        health = partial(report, engine, scheduler)
        return MetricsEndpoint(parts.metrics(), host, port, token, health)
    except OSError as exc:
        problem = exc.strerror or exc
        fail(
            ConfigError(
                f"METRICS_PORT: cannot serve metrics on {host}:{port} ({problem}); "
                "choose a free port, or leave METRICS_PORT unset"
            )
        )


def register_cli(app: Flask) -> None:
    """Attach the command groups to the app."""
    app.cli.add_command(scheduler_cli)
    app.cli.add_command(tasks_cli)
    app.cli.add_command(schedules_cli)
    app.cli.add_command(queues_cli)
