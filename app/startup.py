"""Start-up checks: a bad setting stops a process with one line and exit status 2."""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import NoReturn

from app import logs
from app.config import ConfigError, Settings
from app.handlers import Registry, load_modules
from app.logs import JsonFormatter

# The status of a process stopped by a bad setting, whatever the entry point.
EXIT_STATUS = 2


# The database answers but was never migrated: every serving command says so, in one line.
UNMIGRATED = (
    "DATABASE_URL names a database without the service's tables: run `flask db upgrade` "
    "first, in the project's checkout, which holds the migrations (`make run` does)"
)


def error_line(error: ConfigError) -> str:
    """Return the line reporting `error`: `error: ...`, or a JSON object with LOG_FORMAT=json."""
    # Read raw: the bad setting may be LOG_FORMAT itself, and then the line is text.
    if os.environ.get("LOG_FORMAT", "").strip().lower() != "json":
        return f"error: {error}"
    record = logging.LogRecord("app.config", logging.ERROR, __file__, 0, str(error), None, None)
    return JsonFormatter().format(record)


def fail(error: ConfigError) -> NoReturn:
    """Print the line for `error` to stderr and exit with status 2."""
    print(error_line(error), file=sys.stderr, flush=True)
    sys.exit(EXIT_STATUS)


def checked_settings() -> Settings:
    """Read the settings and try the handler modules on a spare registry, or `fail`.

    The gunicorn master calls it before it starts a worker: a bad setting found in a
    worker would only be reported after the server had begun to start.
    """
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        # Quietly: the worker loads them again and logs what they say then.
        logging.disable(logging.WARNING)
        try:
            load_modules(Registry(strict=settings.strict_task_types), settings.task_handlers)
        finally:
            logging.disable(logging.NOTSET)
    except ConfigError as error:
        fail(error)
    return settings


def freeze_heap() -> None:
    """Leave what the process built before serving out of every later garbage collection.

    The modules, tables and schemas loaded at start-up live as long as the process; a full
    collection walking them took 75-140 ms on a 2-core machine, a pause of every thread
    that lands inside whatever transaction one of them holds (a claim, a prune chunk).
    Frozen, they are never walked again; what the process allocates later still is.
    """
    gc.collect()
    gc.freeze()
