"""Production settings for gunicorn: one worker process holds the API and the scheduler.

More API processes: run them with SCHEDULER_ENABLED=false and execute tasks with
`flask scheduler run` (docs/deployment.md#running-several-instances). Claims stay
exclusive whatever the count.

Metrics: every worker writes its values to one directory, PROMETHEUS_MULTIPROC_DIR (a
fresh temporary one unless set), so /metrics answers the server's totals whichever worker
serves it, and a worker that gunicorn replaces takes nothing away from them.
"""

from __future__ import annotations

import atexit
import errno
import os
import select
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client picks multiprocess mode when it is first imported, by the app's
# modules below: the directory must be named before them.
owned_metrics_dir = not os.environ.get(METRICS_DIR_VARIABLE)
if owned_metrics_dir:
    os.environ[METRICS_DIR_VARIABLE] = tempfile.mkdtemp(prefix="taskscheduler-metrics-")
metrics_dir = Path(os.environ[METRICS_DIR_VARIABLE])


def _remove_metrics_dir(master: int) -> None:
    """Remove the metrics directory this file created, when the master exits: stopped,
    or refused at start (a taken address, a bad setting), which on_exit does not see.
    Forked workers inherit the call, and leave it alone."""
    if os.getpid() == master:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if owned_metrics_dir:
    atexit.register(_remove_metrics_dir, os.getpid())

from gunicorn import util as gunicorn_util  # noqa: E402
from gunicorn.workers.gthread import ThreadWorker  # noqa: E402
from prometheus_client import multiprocess  # noqa: E402

from app.config import ConfigError  # noqa: E402
from app.http.errors import protocol_error  # noqa: E402
from app.runtime.shutdown import REPEAT_WINDOW_S, ignore_late_stops  # noqa: E402
from app.serverlogs import TimedOutClients  # noqa: E402
from app.services.streams import SEND_TIMEOUT_S  # noqa: E402
from app.startup import checked_settings, fail  # noqa: E402

# A worker exiting with this status makes the gunicorn master stop ("Worker failed to boot").
WORKER_BOOT_ERROR = 3


class _ClientSocket(socket.socket):
    """A client's connection whose blocking reads give up after CLIENT_TIMEOUT_S seconds
    in which the client sent nothing.

    gthread makes a connection blocking, with no timeout, for each request it serves: a
    client that sent its headers and then part of a body held a request thread for good,
    and a few such clients held them all. Writes are left alone: a socket timeout would
    bound a whole answer's `sendall`, cutting off a client that reads a large answer
    slowly but steadily (the event stream sets its own).
    """

    def recv(self, size: int, flags: int = 0) -> bytes:
        """Read, once the client has sent something within CLIENT_TIMEOUT_S."""
        if self.gettimeout() is None:  # blocking, with no timeout of gunicorn's own
            waiting = select.poll()
            waiting.register(self.fileno(), select.POLLIN | select.POLLPRI)
            if not waiting.poll(settings.client_timeout_s * 1000):
                raise TimeoutError(f"the client sent nothing for {settings.client_timeout_s} s")
        return super().recv(size, flags)


class DrainingThreadWorker(ThreadWorker):
    """gthread, except that connections already queued when the worker stops are served,
    and that a client silent for CLIENT_TIMEOUT_S in the middle of a request is let go.

    Stopping, gthread stops accepting at once but closes its listening sockets only after
    the requests in progress are done; the kernel keeps queueing connections meanwhile, and
    closing resets them: the client cannot tell whether its request was read. This worker
    accepts what is queued as it stops (served like any request) and closes the sockets
    right away, so a later connection is refused: a clean answer, never read.
    """

    _closed_listeners = False

    def enqueue_req(self, conn: Any) -> None:
        """Hand a connection to a request thread, as a _ClientSocket from its first (TLS
        connections aside: gunicorn wraps their socket itself)."""
        if not conn.initialized and not self.cfg.is_ssl and type(conn.sock) is socket.socket:
            raw = conn.sock
            conn.sock = _ClientSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
            conn.sock.setblocking(False)  # as gthread left it, for its poller
        super().enqueue_req(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop accepting; once the worker is stopping, serve the queue and close."""
        super().set_accept_enabled(enabled)
        if enabled or self.alive or self._closed_listeners:
            return  # merely full for now, or already closed
        self._closed_listeners = True
        # Requests waiting for a task to end answer now, with the task as it is; event
        # streams end (their clients reconnect to another worker with Last-Event-ID).
        from app import parts

        parts.waiters(self.wsgi).close()
        parts.streams(self.wsgi).close()
        for listener in self.sockets:
            # Bounded: connections arriving without pause must not hold the stop forever.
            for _ in range(self.worker_connections):
                if not _queued(listener):
                    break
                self.accept(listener)
            listener.close()


def _write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """Answer a request gunicorn could not read (a request line or headers too long, a
    malformed request or body framing) with the API's JSON error, not an HTML page."""
    gunicorn_util.write_nonblock(sock, protocol_error(status, reason, message))


# The workers answer such requests through this function of gunicorn's.
gunicorn_util.write_error = _write_json_error


def _queued(listener: Any) -> bool:
    """Tell whether a connection waits to be accepted on `listener`."""
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _address(host: str, port: int) -> str:
    """Return `host:port` for gunicorn's bind; an IPv6 address goes in brackets ([::]:3000)."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# A bad setting, or a handler module that cannot load, stops the master here: one line, exit 2.
settings = checked_settings()

bind = _address(settings.host, settings.port)
workers = settings.web_concurrency
worker_class = DrainingThreadWorker
threads = settings.gunicorn_threads
# Running tasks get SHUTDOWN_GRACE_S to finish; gunicorn must not kill the worker first.
graceful_timeout = settings.shutdown_grace_s + 10
timeout = 60
accesslog = settings.gunicorn_access_log or None
# The default format's %(u)s is the user name of a Basic Authorization header, where some
# clients put an API token: it stays out of the log.
access_log_format = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
if settings.log_format == "json":
    # The error and access logs as JSON lines, like the app's own.
    logger_class = "app.serverlogs.JsonLogger"
# The default control socket is one path per user, shared by every gunicorn on the host.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Start the metrics afresh, log a timed-out connection as one line, and make the
    first SIGINT a graceful stop, like SIGTERM.

    A process group is signalled as a whole, so the same stop may bring a second SIGINT at
    once; while draining, gunicorn reads its queue directly and would take that copy for a
    quick shutdown. A SIGINT within REPEAT_WINDOW_S of the first stop signal is dropped.
    """
    refuse_taken_addresses(server)
    clear_metrics(metrics_dir)
    # The workers, forked from here, share the error log and its filter.
    server.log.error_log.addFilter(TimedOutClients(settings.client_timeout_s, SEND_TIMEOUT_S))
    quick = server.handle_int
    queue = server.signal
    first: list[float] = []

    def handle_int() -> None:
        if first and time.monotonic() - first[0] >= REPEAT_WINDOW_S:
            quick()
            return
        server.handle_term()

    def on_signal(signum: int, frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            now = time.monotonic()
            if not first:
                first.append(now)
            elif signum == signal.SIGINT and now - first[0] < REPEAT_WINDOW_S:
                return
        queue(signum, frame)

    server.handle_int = handle_int
    server.signal = on_signal


def refuse_taken_addresses(server: Any) -> None:
    """Stop in one line, exit 2, when an address to listen on is taken by another server.

    gunicorn would try five times a second apart, logging each, then exit 1. Left to it
    when it inherits its sockets (a USR2 upgrade, systemd): they are taken by design.
    """
    if "GUNICORN_FD" in os.environ or "LISTEN_FDS" in os.environ:
        return
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            _refuse_a_served_socket(str(address))
            continue
        host, port = address[0], address[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            if server.cfg.reuse_port:  # shared on purpose with other servers that ask too
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                problem = _bind_problem(host, port, exc)
                if problem is not None:
                    fail(ConfigError(problem))


def _bind_problem(host: str, port: int, exc: OSError) -> str | None:
    """Say in one line why `host`:`port` cannot be bound, or None to leave it to gunicorn."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"PORT {port} on {host} is taken by another server: stop it, or set PORT (or "
            "HOST) to a free one"
        )
    if isinstance(exc, socket.gaierror):
        return (
            f"HOST {host!r} is neither an address nor a name this machine can resolve: use "
            "127.0.0.1, 0.0.0.0 (every interface) or one of this machine's addresses"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"HOST {host} is not an address of this machine: use 127.0.0.1, 0.0.0.0 (every "
            "interface) or one of its own addresses"
        )
    if exc.errno == errno.EACCES:
        return f"PORT {port} needs privileges this process lacks: use a port from 1024 up"
    return None  # gunicorn says what else is wrong with it


def _refuse_a_served_socket(path: str) -> None:
    """Stop in one line, exit 2, when a server answers on the unix socket `path`.

    gunicorn unlinks the path and binds it anew: the server there would go on running,
    unreachable, with the tasks it holds. A socket no one answers on is a stale one,
    left to gunicorn to replace.
    """
    if not os.path.exists(path) or not stat.S_ISSOCK(os.stat(path).st_mode):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # stale (refused), or something else gunicorn reports itself
    fail(
        ConfigError(
            f"the unix socket {path} is served by another server: stop it, or bind another path"
        )
    )


def clear_metrics(directory: Path) -> None:
    """Delete the value files a previous server left, which a scrape would add up."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (running tasks); its counters still count."""
    multiprocess.mark_process_dead(worker.pid, str(metrics_dir))


def post_worker_init(worker: Any) -> None:
    """Start the scheduler in the serving process and take over the stop signals.

    gunicorn's own worker handlers exit at once on SIGINT/SIGQUIT, even in the middle of
    a drain; ours start the drain at once, stop the worker's loop, and let `worker_exit`
    wait for the drain (or hurry it) instead.
    """
    from app import parts
    from app.runtime.shutdown import GracefulStop
    from app.startup import freeze_heap
    from app.storage.health import schema_problem

    problem = schema_problem(parts.engine(worker.wsgi))
    if problem is not None:
        worker.log.error(problem)
        sys.exit(WORKER_BOOT_ERROR)  # the master stops, rather than boot another

    freeze_heap()
    if not worker.alive:
        # Stopped while it booted (gunicorn's own handler noted the signal): the worker
        # ends without serving, and no scheduler starts to claim what it would not run.
        worker.log.info("stopped while booting: no scheduler started")
        return
    if not worker.wsgi.config["SCHEDULER_ENABLED"]:
        return
    scheduler = parts.scheduler(worker.wsgi)

    def stop_serving() -> None:
        worker.alive = False

    # Ours before the scheduler starts: a stop from here on is noted, and it starts only
    # if none came, so that it never claims what it would only hold for the grace.
    stop = GracefulStop(scheduler, settings.shutdown_grace_s, on_stop=stop_serving)
    stop.install()
    if worker.alive and not stop.signalled():
        scheduler.start()
    else:
        worker.log.info("stopped while booting: no scheduler started")
    stop.start()
    worker.graceful_stop = stop
    if not worker.alive:  # the signal came just before ours took over: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def worker_exit(server: Any, worker: Any) -> None:
    """Drain the scheduler: finish within the grace period, requeue the rest."""
    from app.runtime.shutdown import leave_lingering_handlers

    stop = getattr(worker, "graceful_stop", None)
    if stop is not None:
        stop.finish()
        leave_lingering_handlers(stop.scheduler)
        return
    # Stopped before post_worker_init took over the signals, or serving the API alone
    # (its scheduler never started): drain, or only close the database, here.
    app = getattr(worker, "wsgi", None)
    scheduler = app.extensions.get("scheduler") if app is not None else None
    if scheduler is not None:
        scheduler.stop(settings.shutdown_grace_s)
        leave_lingering_handlers(scheduler)


def on_exit(server: Any) -> None:
    """The workers are gone and the master exits: a late stop signal changes nothing now,
    and must not turn its exit status 0 into the signal's own."""
    ignore_late_stops()
