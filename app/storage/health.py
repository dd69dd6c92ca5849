"""The database's part of `/health` (does it serve reads, and writes?), and whether its
schema is the one this version needs."""

from __future__ import annotations

from typing import Any
from weakref import WeakSet

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from app.startup import UNMIGRATED
from app.storage import database, dbfaults

# The migration this version of the code needs (migrations/versions/); a test holds it
# to the newest revision there.
SCHEMA_REVISION = "0015"


def database_health(engine: Engine) -> dict[str, Any]:
    """Say whether the database serves reads and writes, and if not, what is wrong.

    `status` is `ok`, `unreachable` (a read fails), `unusable` (this version cannot run on
    its schema: never migrated, or migrated by an older version; or the server refuses
    this deployment's login: no such database or role, a wrong password) or `refusing_writes`
    (reads work, but this process's last write was refused, as by a full disk, and none
    has committed since); `reason` is a stable code and `error` a sentence an operator can
    act on.
    """
    storage: dict[str, Any] = {"dialect": engine.dialect.name}
    try:
        with database.read(engine) as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        fault = dbfaults.classify(exc)
        if fault is None:
            problem = f"the database failed a trivial query ({type(exc).__name__})"
            return {**storage, "status": "unreachable", "reason": "error", "error": problem}
        status = "unusable" if fault.kind is dbfaults.Kind.REFUSED else "unreachable"
        return {**storage, "status": status, "reason": fault.reason, "error": fault.problem}
    schema = checked_schema(engine)
    if schema is not None:
        return {**storage, "status": "unusable", "reason": "schema", "error": schema}
    refused = dbfaults.refusing_writes(engine)
    if refused is None:
        return {**storage, "status": "ok"}
    fault, age_s = refused
    problem = f"writes are refused: {fault.problem} (last refused {age_s:.0f} s ago)"
    return {**storage, "status": "refusing_writes", "reason": fault.reason, "error": problem}


# The engines whose schema this process found usable: /health looks again only while it
# is not (until `flask db upgrade` runs). A request that fails on the schema looks anew.
_usable: WeakSet[Engine] = WeakSet()


def checked_schema(engine: Engine) -> str | None:
    """Say in a short sentence why this version cannot run on the database's schema, or
    None: when it can (remembered), or when the look itself failed (not remembered)."""
    if engine in _usable:
        return None
    try:
        found = _revision(engine)
    except SQLAlchemyError:
        return None
    if found is not None and found >= SCHEMA_REVISION:
        _usable.add(engine)
        return None
    if found is None:
        return "the database has none of the service's tables: run `flask db upgrade`"
    return (
        f"the database's schema is at revision {found}, older than this version's "
        f"{SCHEMA_REVISION}: run `flask db upgrade` (docs/deployment.md, Upgrading)"
    )


def schema_failure(exc: BaseException, engine: Engine) -> str | None:
    """Say why a statement failed with `exc` when the cause is the schema: its tables
    missing (never migrated, or dropped since) or older than this version. None for any
    other error.

    `flask run`, gunicorn and the commands refuse to start on such a database; an app
    served another way meets it at its first request.
    """
    if not isinstance(exc, SQLAlchemyError):
        return None
    _usable.discard(engine)  # what was usable may not be any more: look again
    return checked_schema(engine)


def schema_problem(engine: Engine) -> str | None:
    """Say why this version cannot run on the database's schema: never migrated, or
    migrated by an older version. None when it can, or when the database cannot be
    reached (the service waits for it, as at any time)."""
    try:
        found = _revision(engine)
    except SQLAlchemyError:
        return None
    if found is not None and found >= SCHEMA_REVISION:
        return None
    if found is None:
        return UNMIGRATED
    return (
        f"the database's schema is at revision {found}, and this version needs "
        f"{SCHEMA_REVISION}: run `flask db upgrade`, then start this version (whether the "
        "running instances must stop first depends on the revision: docs/deployment.md, "
        "Upgrading)"
    )


def _revision(engine: Engine) -> str | None:
    """Return the revision the database's schema is at (SCHEMA_REVISION for one made from
    the models directly, as the tests make theirs), or None when it has none of the
    service's tables; raise SQLAlchemyError when it cannot look."""
    with engine.connect() as conn:
        tables = inspect(conn)
        if not tables.has_table("tasks"):
            return None
        if not tables.has_table("alembic_version"):
            return SCHEMA_REVISION
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return SCHEMA_REVISION if revision is None else str(revision)
