"""Settings from the environment (and `.env`), validated once at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from dotenv import find_dotenv, load_dotenv
from flask.sansio.scaffold import find_package


def _folders() -> tuple[str | None, str]:
    """Return the project's folder (None for an installed `app` package) and the app's
    instance folder, found as Flask finds it: beside the package in a checkout, under the
    environment's `var/` once installed."""
    prefix, package_path = find_package("app")
    if prefix is None:
        return package_path, os.path.join(package_path, "instance")
    return None, os.path.join(prefix, "var", "app-instance")


# A relative SQLite path in DATABASE_URL names a file from the project's folder (the
# checkout holding app/ and wsgi.py), whatever folder a process starts in; for the
# installed package, from the working directory. The instance folder holds the default
# SQLite file.
PROJECT_FOLDER, INSTANCE_FOLDER = _folders()


class ConfigError(ValueError):
    """Raised when an environment variable holds a value the service cannot use."""


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        value = value.upper() if allowed[0].isupper() else value.lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _database_url(name: str, raw: str) -> str:
    url = raw.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith(("sqlite://", "postgresql+psycopg://")):
        raise ConfigError(f"{name} must be a sqlite:// or postgresql:// URL, got {raw!r}")
    host = url.removeprefix("sqlite://").split("/", 1)[0].split("?", 1)[0]
    if url.startswith("sqlite://") and host:
        raise ConfigError(
            f"{name} gives a SQLite URL a host ({host[:40]!r}), which it cannot have: name "
            "a file as sqlite:///relative/path.db (three slashes: from the project's folder) or "
            "sqlite:////absolute/path.db (four)"
        )
    if not url.startswith("sqlite:///"):
        return url
    named, _, query = url.removeprefix("sqlite:///").partition("?")
    # A URI filename (`file:` with ?uri=true) is percent-encoded; any other is a path.
    uri = named.startswith("file:") and "true" in parse_qs(query).get("uri", [])
    path = unquote(named.removeprefix("file:")) if uri else named
    if not path or path == ":memory:":
        return url
    if not os.path.isabs(path):
        # Flask-SQLAlchemy would open it under the instance folder, so the documented
        # default (instance/tasks.db) named instance/instance/tasks.db.
        path = _from_the_project(name, path)
    if os.path.isdir(path):
        raise ConfigError(
            f"{name} names a folder ({path}), not a SQLite file: name a file in it, "
            f"e.g. sqlite:///{os.path.join(path, 'tasks.db')}"
        )
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ConfigError(
            f"{name} names a SQLite file in a folder that does not exist ({folder}): "
            "create the folder, or name a file in one that exists"
        )
    named = "file:" + quote(path, safe="/") if uri else path
    return f"sqlite:///{named}" + (f"?{query}" if query else "")


def _from_the_project(name: str, path: str) -> str:
    """Return relative `path` from the project's folder, refusing it while a database
    is only where earlier versions opened it (under the instance folder): opening
    another file in its place would hide the tasks."""
    meant = os.path.abspath(os.path.join(PROJECT_FOLDER or os.getcwd(), path))
    earlier = os.path.abspath(os.path.join(INSTANCE_FOLDER, path))
    if meant == earlier or not _holds_data(earlier):
        return meant
    where = "the project's folder" if PROJECT_FOLDER else "the working directory"
    if _holds_data(meant):
        found = f"a database is there, and another at {earlier}, where earlier versions "
        fix = "name the one to use by its absolute path"
    else:
        found = f"no database is there, but one is at {earlier}, where earlier versions "
        fix = f"name that file (sqlite:///{earlier}), or move it with its -wal and -shm files"
    raise ConfigError(
        f"{name} names {path}, a path from {where} ({meant}): {found}opened relative paths: {fix}"
    )


def _holds_data(path: str) -> bool:
    """Whether `path` is a file with anything in it (an empty one is what opening a
    missing SQLite file leaves, or `touch`)."""
    return os.path.isfile(path) and os.path.getsize(path) > 0


def _text(name: str, raw: str) -> str:
    return raw.strip()


QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")


def queue_names(name: str, raw: str) -> tuple[str, ...]:
    """Parse a comma-separated list of queue names (the queues an instance serves)."""
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not names:
        raise ConfigError(
            f"{name} names no queue ({raw!r}): leave it unset to serve every queue, or list "
            "the queues to serve, comma-separated"
        )
    bad = [n for n in names if not QUEUE_NAME.match(n)]
    if bad:
        raise ConfigError(
            f"{name} holds {bad[0][:70]!r}, which is not a queue name: use 1 to 64 characters "
            "from A-Z a-z 0-9 . _ : - starting with a letter or digit, comma-separated"
        )
    return names


def _host(name: str, raw: str) -> str:
    host = raw.strip()
    if not all(c.isalnum() or c in ".-:[]" for c in host):
        raise ConfigError(
            f"{name} must be an address or host name to bind, such as 127.0.0.1 or 0.0.0.0, "
            f"got {raw!r}"
        )
    return host


def _folder(name: str, raw: str) -> str:
    path = raw.strip()
    if not os.path.isdir(path):
        raise ConfigError(
            f"{name} must name an existing folder, got {raw!r}: create it, or leave {name} unset"
        )
    return path


def _log_file(name: str, raw: str) -> str:
    path = raw.strip()
    if path == "-":
        return path
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ConfigError(
            f"{name} must be - (standard output) or a file in a folder that exists, got {raw!r}"
        )
    return path


MIN_TOKEN_LENGTH = 16


def _token(name: str, raw: str) -> str:
    # The value is a secret: no message here ever repeats it.
    token = raw.strip()
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError(f"{name} must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{name} must be at least {MIN_TOKEN_LENGTH} characters long; "
            'generate one with python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return token


def _setting(default: Any, parse: Callable[[str, str], Any], env: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"parse": parse, "env": env}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads, with its default (docs/configuration.md#settings)."""

    port: int = _setting(3000, _integer(1, 65535), "PORT")
    # The server's settings (gunicorn.conf.py); 0.0.0.0 or :: opens the API to the network.
    host: str = _setting("127.0.0.1", _host, "HOST")
    web_concurrency: int = _setting(1, _integer(1, 256), "WEB_CONCURRENCY")
    gunicorn_threads: int = _setting(8, _integer(1, 1024), "GUNICORN_THREADS")
    # Empty: no access log; `-`: standard output; otherwise a file.
    gunicorn_access_log: str = _setting("", _log_file, "GUNICORN_ACCESS_LOG")
    # Seconds a client may send nothing in the middle of a request (its headers or body).
    client_timeout_s: int = _setting(30, _integer(1, 3600), "CLIENT_TIMEOUT_S")
    database_url: str = _setting("", _database_url, "DATABASE_URL")
    max_concurrent_tasks: int = _setting(3, _integer(1, 1024), "MAX_CONCURRENT_TASKS")
    polling_interval_ms: int = _setting(1000, _integer(1, 3_600_000), "POLLING_INTERVAL")
    scheduler_enabled: bool = _setting(True, _boolean, "SCHEDULER_ENABLED")
    shutdown_grace_s: int = _setting(25, _integer(0, 3600), "SHUTDOWN_GRACE_S")
    sqlite_synchronous: str = _setting(
        "FULL", _choice("FULL", "NORMAL", "EXTRA"), "SQLITE_SYNCHRONOUS"
    )
    cors_origins: str = _setting("*", _text, "CORS_ORIGINS")
    lease_s: int = _setting(30, _integer(2, 86_400), "LEASE_S")
    task_handlers: str = _setting("", _text, "TASK_HANDLERS")
    # The queues this instance's scheduler claims from; empty: every queue.
    scheduler_queues: tuple[str, ...] = _setting((), queue_names, "SCHEDULER_QUEUES")
    # Read by the example handlers (app/example_handlers.py); checked here to fail at start.
    task_data_dir: str = _setting("", _folder, "TASK_DATA_DIR")
    strict_task_types: bool = _setting(False, _boolean, "STRICT_TASK_TYPES")
    retention_days: int = _setting(7, _integer(0, 36_500), "RETENTION_DAYS")
    log_format: str = _setting("text", _choice("text", "json"), "LOG_FORMAT")
    # Empty: the API is open. Set: every /api route needs `Authorization: Bearer <token>`.
    api_token: str = _setting("", _token, "API_TOKEN", secret=True)
    # With a token: /health and /metrics need it too (they are open otherwise).
    auth_ops_routes: bool = _setting(False, _boolean, "AUTH_OPS_ROUTES")
    # None: no limit on the QUEUED tasks that submissions may add up to.
    max_queued_tasks: int | None = _setting(None, _integer(1, 100_000_000), "MAX_QUEUED_TASKS")
    # Requests one worker holds waiting for a task to end (`?wait=`), below its threads;
    # None: half of them (0 with one thread: waits are refused).
    max_waiting_requests: int | None = _setting(None, _integer(0, 10_000), "MAX_WAITING_REQUESTS")
    # Event streams (`GET /api/events`) one worker holds; None: a quarter of its threads,
    # fewer if the waiting requests would leave no thread free.
    max_event_streams: int | None = _setting(None, _integer(0, 10_000), "MAX_EVENT_STREAMS")
    # How long one event stream lasts before the client reconnects (with Last-Event-ID).
    event_stream_max_s: int = _setting(300, _integer(1, 86_400), "EVENT_STREAM_MAX_S")
    # How long events are kept for streams to resume from.
    event_retention_s: int = _setting(3600, _integer(60, 30 * 86_400), "EVENT_RETENTION_S")
    # None: `flask scheduler run` serves no metrics (gunicorn serves them at /metrics).
    metrics_port: int | None = _setting(None, _integer(1, 65535), "METRICS_PORT")
    metrics_host: str = _setting("127.0.0.1", _text, "METRICS_HOST")

    @property
    def waiting_capacity(self) -> int:
        """How many requests one worker holds waiting for a task to end."""
        if self.max_waiting_requests is not None:
            return self.max_waiting_requests
        return self.gunicorn_threads // 2

    @property
    def stream_capacity(self) -> int:
        """How many event streams one worker holds."""
        if self.max_event_streams is not None:
            return self.max_event_streams
        spare = self.gunicorn_threads - 1 - self.waiting_capacity  # one thread for the rest
        return max(0, min(self.gunicorn_threads // 4, spare))

    def __post_init__(self) -> None:
        if self.auth_ops_routes and not self.api_token:
            raise ConfigError("AUTH_OPS_ROUTES=true needs API_TOKEN to be set")
        held = self.waiting_capacity + self.stream_capacity
        if self.max_event_streams is not None and held >= self.gunicorn_threads:
            raise ConfigError(
                f"MAX_EVENT_STREAMS ({self.stream_capacity}) and MAX_WAITING_REQUESTS"
                f" ({self.waiting_capacity}) together must be below GUNICORN_THREADS"
                f" ({self.gunicorn_threads}): they would take every thread of a worker"
            )
        waiting = self.max_waiting_requests
        if waiting is not None and waiting >= self.gunicorn_threads:
            raise ConfigError(
                f"MAX_WAITING_REQUESTS must be below GUNICORN_THREADS ({self.gunicorn_threads}),"
                f" got {waiting}: waiting requests would take every thread of a worker"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting, letting the process environment win over `.env`."""
        if environ is None:
            load_dotenv(find_dotenv(usecwd=True), override=False)
            environ = os.environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"])
            if raw is not None and raw.strip() != "":
                values[spec.name] = spec.metadata["parse"](spec.metadata["env"], raw)
        return cls(**values)

    def to_flask(self) -> dict[str, Any]:
        """Return the settings as upper-case Flask config keys."""
        return {spec.name.upper(): getattr(self, spec.name) for spec in fields(self)}
