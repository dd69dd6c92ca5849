"""`flask run`: Flask's development server, with one scheduler in the serving process."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import FrameType

import click
import flask.cli
from flask import Flask
from flask.cli import get_debug_flag, run_command
from werkzeug import _reloader
from werkzeug.serving import is_running_from_reloader

from app import parts
from app.config import ConfigError
from app.runtime.scheduler import Scheduler
from app.runtime.shutdown import GracefulStop, leave_lingering_handlers
from app.startup import fail
from app.storage import database
from app.storage.health import schema_problem

# Named like the other stop messages, so that operators' log filters find them.
log = logging.getLogger("app.shutdown")


def running() -> bool:
    """Tell whether this process runs `flask run` (the reloader's parent included)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.command is run_command


def serving() -> bool:
    """Tell whether this process serves requests for `flask run`.

    With the reloader, `flask run` starts a parent that only watches files and restarts a
    child that serves; only the child may run a scheduler. Other commands never do.
    """
    if not running():
        return False
    ctx = click.get_current_context()
    reload = ctx.params.get("reload")
    if reload is None:  # as `flask run` decides: the reloader comes with --debug
        reload = get_debug_flag()
    return not reload or is_running_from_reloader()


def log_banner() -> None:
    """Write Flask's start-up banner as a log line, so that JSON logs stay JSON."""

    def banner(debug: bool, app_import_path: str | None) -> None:
        if not is_running_from_reloader():  # the parent said it already
            mode = "on" if debug else "off"
            logging.getLogger("app.devserver").info(
                "serving Flask app %r, debug mode %s", app_import_path, mode
            )

    flask.cli.show_server_banner = banner


def forward_interrupts() -> None:
    """In the reloader's watching parent: pass SIGINT, SIGTERM and SIGQUIT on to the
    serving child rather than stop at once, which would kill the child in the middle of
    its drain. The parent goes on waiting for the child and exits as it does."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        for pid in _children():
            with suppress(OSError):  # it exited meanwhile
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGQUIT, forward)
    # Werkzeug's reloader makes SIGTERM exit the parent at once (killing the child) as it
    # starts, after this module is loaded: forward it from the child's first start on.
    restart = _reloader.ReloaderLoop.restart_with_reloader

    def restart_forwarding_sigterm(loop: _reloader.ReloaderLoop) -> int:
        signal.signal(signal.SIGTERM, forward)
        return restart(loop)

    _reloader.ReloaderLoop.restart_with_reloader = restart_forwarding_sigterm  # type: ignore[method-assign,assignment]


def _children() -> list[int]:
    """Return the pids of this process's children (Linux; none found elsewhere)."""
    found: list[int] = []
    for listed in Path("/proc/self/task").glob("*/children"):
        with suppress(OSError):
            found += [int(pid) for pid in listed.read_text().split()]
    return found


def start(app: Flask, grace_s: float) -> Scheduler | None:
    """Start the app's scheduler and drain it when SIGINT or SIGTERM stops the server.

    The first signal drains (running tasks get `grace_s`, then go back to the queue) and
    stops the server as Ctrl-C always did; a second SIGINT a second or more later hurries
    the drain (docs/semantics.md#stop-signals). Under the
    reloader, a code change ends this process from its main thread; the same drain runs
    then, before Python waits for the pool's threads (which would let a running task go on
    for as long as it likes, and exit before its outcome was written).
    """
    problem = schema_problem(parts.engine(app))
    if problem is not None:
        fail(ConfigError(problem))
    if not app.config["SCHEDULER_ENABLED"]:
        # The API alone: nothing to drain. SIGTERM stops it as Ctrl-C does, and its
        # database is closed as Python exits, not left to the signal's default.
        signal.signal(signal.SIGTERM, _interrupt)
        atexit.register(database.close, parts.engine(app))
        return None
    scheduler = parts.scheduler(app)
    scheduler.start()
    # The handlers only note a signal (GracefulStop's rules); its threads drain and hurry.
    graceful = GracefulStop(scheduler, grace_s)
    graceful.start()
    draining = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal draining
        graceful.note(signum, frame)
        if draining:  # the first one's handler waits below: this one runs inside it
            return
        draining = True
        graceful.wait()
        leave_lingering_handlers(scheduler)
        raise KeyboardInterrupt

    def drain_before_reload() -> None:
        nonlocal draining
        if not draining:  # the one drain: a signal now only hurries it
            draining = True
            log.info("reloading: draining")
            graceful.finish()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGQUIT, stop)
    if is_running_from_reloader():
        # Called at exit before the pool's own hook, which waits for every running task.
        register = getattr(threading, "_register_atexit", atexit.register)
        register(drain_before_reload)
        _keep_sigterm(stop)
    return scheduler


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _keep_sigterm(handler: Callable[[int, FrameType | None], None]) -> None:
    """In the reloader's serving child: werkzeug makes SIGTERM exit at once here too, as
    its reloader loop starts (after this module is loaded); a second SIGTERM then cut the
    drain short. Take SIGTERM back as the loop is entered."""
    enter = _reloader.ReloaderLoop.__enter__

    def enter_keeping_sigterm(loop: _reloader.ReloaderLoop) -> _reloader.ReloaderLoop:
        entered = enter(loop)
        signal.signal(signal.SIGTERM, handler)
        return entered

    _reloader.ReloaderLoop.__enter__ = enter_keeping_sigterm  # type: ignore[method-assign]
