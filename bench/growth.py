"""What grows with the data: costs that should stay flat as tasks pile up, on SQLite.

Each figure runs in this process on a SQLite file written straight with raw sqlite3 (one
transaction, not measured), at the service's default `SQLITE_SYNCHRONOUS=FULL`, through the
app's own code: the `Store` for claims and finishes, `app.storage.retention.prune`, and
Flask's test client for the HTTP routes (route, service and queries; no network, no
gunicorn). So each figure is the server-side time of one operation:
- a failure cascading down a chain: `Store.finish` of the chain's root as FAILED;
- the retry of that failed root, bringing the whole chain back: `POST .../retry`;
- the cancel of a chain's root: `POST /api/tasks/<root>/cancel`;
- a failure cascading to the dependents of one task, five times the chain's length wide,
  in rows per second;
- a claim with no delayed task, and behind `delayed` QUEUED tasks whose `not_before` is
  a day away (submitted before the ready ones): `Store.claim(worker, 1)`, interleaved;
- at each stored size: the admission's count of QUEUED tasks (`counts.queued`, what
  MAX_QUEUED_TASKS runs per submission), `GET /metrics`, `GET /dashboard/counts`, and pages
  of 100 with one filter, status+type and status+batch_id;
- prune: finished tasks 30 days old (every second one depending on the one before)
  deleted with the default retention (7 days), in rows per second and the longest chunk
  (one transaction each).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import db as store
from bench.progress import log
from bench.server import BASE_SETTINGS, Database, migrate
from bench.storage import register_worker

COLUMNS = (
    "id",
    "type",
    "duration_ms",
    "status",
    "priority",
    "trigger_rule",
    "max_attempts",
    "retry_backoff_ms",
    "pending_deps",
    "attempts",
    "failures",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "not_before",
    "run_at",
    "batch_id",
    "cancel_requested",
)
INSERT = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
EDGE = "INSERT INTO task_dependencies (task_id, dependency_id, position) VALUES (?, ?, 0)"
# The wide cascade's dependents, per task of the chain.
FAN_OUT = 5
# Runs of each read figure; the median is reported.
READS = 15
# Claims per database in the claim figure (after a few unmeasured ones).
CLAIMS = 30
WARMUP = 3
# Of every 10 stored tasks in the size figures: 7 COMPLETED, 1 FAILED, 1 CANCELLED, and one
# QUEUED held back for a day; one task in 1,000 has the type "rare"; batches of 100.
STATUSES = ("COMPLETED",) * 7 + ("FAILED", "CANCELLED", "QUEUED")
READ_FIGURES = (
    "queued_count_ms",
    "metrics_ms",
    "dashboard_counts_ms",
    "list_status_ms",
    "list_type_ms",
    "list_status_type_ms",
    "list_status_batch_ms",
)


@dataclass(frozen=True)
class Sizes:
    """How big each growth figure's data is."""

    stored: list[int]
    chain: int
    delayed: int
    prune: int


QUICK = Sizes([1_000, 10_000], 500, 5_000, 10_000)
DEFAULT = Sizes([1_000, 100_000], 2_000, 20_000, 50_000)
FULL = Sizes([1_000, 1_000_000], 20_000, 100_000, 200_000)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(" ")


def _row(task_id: str, status: str, **fields: Any) -> tuple[Any, ...]:
    at = fields.pop("at", _now())
    finished = status not in ("QUEUED", "RUNNING")
    values: dict[str, Any] = {
        "id": task_id,
        "type": "noop",
        "duration_ms": 1,
        "status": status,
        "priority": 0,
        "trigger_rule": "all_success",
        "max_attempts": 1,
        "retry_backoff_ms": 1000,
        "pending_deps": 0,
        "attempts": 1 if finished else 0,
        "failures": 1 if status == "FAILED" else 0,
        "created_at": _text(at),
        "updated_at": _text(at),
        "started_at": _text(at) if finished else None,
        "finished_at": _text(at) if finished else None,
        "not_before": None,
        "run_at": None,
        "batch_id": None,
        "cancel_requested": 0,
    }
    values.update({k: _text(v) if isinstance(v, datetime) else v for k, v in fields.items()})
    return tuple(values[c] for c in COLUMNS)


def build(db: Database, rows: Iterator[tuple[Any, ...]], edges: Iterator[tuple[str, str]]) -> float:
    """Create the schema, then insert `rows` and `edges` in one transaction; return seconds."""
    migrate(db)
    if db.kind == "postgresql":
        return _build_postgres(db, rows, edges)
    assert db.path is not None
    began = time.perf_counter()
    conn = sqlite3.connect(db.path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # setting up, not measured
        conn.execute("BEGIN")
        conn.executemany(INSERT, rows)
        conn.executemany(EDGE, edges)
        conn.execute("COMMIT")
    finally:
        conn.close()
    # On disk before measuring: else the first measured fsync would write the whole build.
    with open(db.path, "rb+") as written:
        os.fsync(written.fileno())
    return time.perf_counter() - began


def _build_postgres(
    db: Database, rows: Iterator[tuple[Any, ...]], edges: Iterator[tuple[str, str]]
) -> float:
    import psycopg

    began = time.perf_counter()
    with psycopg.connect(db.url.replace("+psycopg", "")) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY tasks ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        with cur.copy(
            "COPY task_dependencies (task_id, dependency_id, position) FROM STDIN"
        ) as copy:
            for task_id, dependency in edges:
                copy.write_row((task_id, dependency, 0))
    # As autovacuum would soon after such a load; done now, so that it does not run
    # during the measurements (on two cores, it took one from them).
    with psycopg.connect(db.url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - began


def _stored_rows(n: int) -> Iterator[tuple[Any, ...]]:
    # Finished two hours ago: retention (7 days) prunes none of them.
    base = _now() - timedelta(hours=2)
    later = _now() + timedelta(days=1)
    step = timedelta(seconds=3600 / max(n, 1))
    for i in range(n):
        status = STATUSES[i % len(STATUSES)]
        fields: dict[str, Any] = {"at": base + i * step, "batch_id": f"b-{i // 100}"}
        if i % 1000 == 500:
            fields["type"] = "rare"
        if status == "QUEUED":
            fields.update(not_before=later, run_at=later)
        yield _row(f"t-{i:07d}", status, **fields)


def _chain(n: int) -> tuple[Iterator[tuple[Any, ...]], Iterator[tuple[str, str]]]:
    rows = (_row(f"c-{i:06d}", "QUEUED", pending_deps=1 if i else 0) for i in range(n))
    edges = ((f"c-{i:06d}", f"c-{i - 1:06d}") for i in range(1, n))
    return rows, edges


def _fan_out(n: int) -> tuple[Iterator[tuple[Any, ...]], Iterator[tuple[str, str]]]:
    rows = (_row(f"w-{i:07d}", "QUEUED", pending_deps=1 if i else 0) for i in range(n + 1))
    edges = ((f"w-{i:07d}", "w-0000000") for i in range(1, n + 1))
    return rows, edges


def _claimable(delayed: int, ready: int) -> Iterator[tuple[Any, ...]]:
    later = _now() + timedelta(days=1)
    for i in range(delayed):
        yield _row(f"d-{i:07d}", "QUEUED", not_before=later, run_at=later)
    for i in range(ready):
        yield _row(f"r-{i:07d}", "QUEUED")


def _old(n: int) -> Iterator[tuple[Any, ...]]:
    base = _now() - timedelta(days=30)
    for i in range(n):
        yield _row(f"o-{i:07d}", "COMPLETED", at=base + timedelta(milliseconds=i))


def open_app(db: Database) -> Any:
    """Return the app on `db` (no scheduler), its state-change lines dropped."""
    from app import create_app, events
    from app.startup import freeze_heap

    env = {**BASE_SETTINGS, "DATABASE_URL": db.url, "SCHEDULER_ENABLED": "false"}
    app = create_app(env)
    events.of(app.extensions["store"].engine).stream = open(os.devnull, "w")  # noqa: SIM115
    freeze_heap()  # as a gunicorn worker does once it has loaded the app
    return app


def _timed(action: Callable[[], Any], runs: int = READS) -> float:
    """Return the median milliseconds of `runs` calls of `action` (after one unmeasured)."""
    action()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def _get(client: Any, path: str) -> Callable[[], Any]:
    def call() -> Any:
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.get_data()[:200]!r}")
        return response

    return call


def reads(db: Database, n: int) -> dict[str, Any]:
    """Time the counts and the filtered pages on `n` stored tasks."""
    from app.storage import counts, database

    app = open_app(db)
    engine = app.extensions["store"].engine
    client = app.test_client()

    def queued() -> int:
        with database.read(engine) as conn:
            return counts.queued(conn)

    batch = f"b-{n // 200}"
    figures = {
        "queued_count_ms": _timed(queued),
        "metrics_ms": _timed(_get(client, "/metrics")),
        "dashboard_counts_ms": _timed(_get(client, "/dashboard/counts")),
        "list_status_ms": _timed(_get(client, "/api/tasks?limit=100&status=FAILED")),
        "list_type_ms": _timed(_get(client, "/api/tasks?limit=100&type=rare")),
        "list_status_type_ms": _timed(
            _get(client, "/api/tasks?limit=100&status=COMPLETED&type=rare")
        ),
        "list_status_batch_ms": _timed(
            _get(client, f"/api/tasks?limit=100&status=FAILED&batch_id={batch}")
        ),
    }
    engine.dispose()
    return {"stored": n, **figures}


def cascade(fail_db: Database, cancel_db: Database, length: int) -> dict[str, Any]:
    """Time the root of a chain of `length` failing, and a cancel of another chain's root."""
    app = open_app(fail_db)
    store_ = app.extensions["store"]
    fail_s = _fail_root(store_)
    _check_settled(fail_db, "c-", length)
    began = time.perf_counter()
    response = app.test_client().post("/api/tasks/c-000000/retry")
    retry_s = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"retry: {response.status_code} {response.get_data()[:200]!r}")
    store_.engine.dispose()
    _check_requeued(fail_db, "c-", length)
    floor_s = bare_write(fail_db, "c-")

    app = open_app(cancel_db)
    client = app.test_client()
    last = f"/api/tasks/c-{length - 1:06d}"
    waiting_s = _walk_s(client, last + "/blockers", 200)
    began = time.perf_counter()
    response = client.post("/api/tasks/c-000000/cancel")
    cancel_s = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"cancel: {response.status_code} {response.get_data()[:200]!r}")
    stopped_s = _walk_s(client, last + "/blockers", 200)
    refused_s = _walk_s(client, last + "/retry", 409, post=True)
    app.extensions["store"].engine.dispose()
    _check_settled(cancel_db, "c-", length)
    return {
        "chain": length,
        "fail_cascade_s": fail_s,
        "retry_cascade_s": retry_s,
        "cancel_cascade_s": cancel_s,
        "bare_write_s": floor_s,
        "blockers_waiting_s": waiting_s,
        "blockers_stopped_s": stopped_s,
        "retry_refused_s": refused_s,
    }


def _walk_s(client: Any, path: str, expected: int, post: bool = False) -> float:
    """Time one request that walks the whole chain down to its root, in seconds."""
    began = time.perf_counter()
    response = client.post(path) if post else client.get(path)
    took = time.perf_counter() - began
    if response.status_code != expected or b"c-000000" not in response.get_data():
        raise RuntimeError(f"{path}: {response.status_code} {response.get_data()[:200]!r}")
    return took


BARE_WRITE = (
    "UPDATE tasks SET status = 'UPSTREAM_FAILED', error_code = 'upstream_failed',"
    " error = 'Dependency ' || id || ' failed, so this task will not run.',"
    " finished_at = {now}, updated_at = {now} WHERE id LIKE {like} AND id <> {root}"
)


def bare_write(db: Database, prefix: str) -> float:
    """Time one UPDATE writing every task of a chain as a failure cascade ends it, and
    its commit: the rows' writes alone, with no walk, the floor of a cascade here."""
    root = f"{prefix}000000"
    if db.kind == "sqlite":
        assert db.path is not None
        conn = sqlite3.connect(db.path, isolation_level=None, timeout=60)
        try:
            conn.execute("PRAGMA synchronous=FULL")  # as the service writes
            conn.execute("PRAGMA temp_store=MEMORY")
            sql = BARE_WRITE.format(now="datetime('now')", like="?", root="?")
            began = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, (prefix + "%", root))
            conn.execute("COMMIT")
            return time.perf_counter() - began
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db.url.replace("+psycopg", "")) as pg:
        sql = BARE_WRITE.format(now="now()", like="%s", root="%s")
        began = time.perf_counter()
        pg.execute(sql, (prefix + "%", root))
        pg.commit()
        return time.perf_counter() - began


def fan_out(db: Database, width: int) -> dict[str, Any]:
    """Time the root of `width` dependents failing: the cascade's rows per second."""
    store_ = open_app(db).extensions["store"]
    took = _fail_root(store_)
    store_.engine.dispose()
    _check_settled(db, "w-", width)
    return {"fan_out": width, "fan_out_s": took, "fan_out_rows_per_s": width / took}


def _fail_root(store_: Any) -> float:
    """Claim the one ready task (a root) and time its finish as FAILED, in seconds."""
    from app.statuses import Status
    from app.storage.store import Outcome

    worker = register_worker(store_)
    (claim,) = store_.claim(worker, 1)
    began = time.perf_counter()
    store_.finish(claim, Outcome(Status.FAILED, error="bench: the root fails"))
    took = time.perf_counter() - began
    store_.deregister(worker)
    return took


def _check_settled(db: Database, prefix: str, length: int) -> None:
    sql = "SELECT count(*) FROM tasks WHERE id LIKE ? AND status IN ('QUEUED', 'RUNNING')"
    left = store.query(db, sql, (prefix + "%",))[0][0]
    if left:
        raise RuntimeError(f"{left:,} of the chain's {length:,} tasks did not settle")


def _check_requeued(db: Database, prefix: str, length: int) -> None:
    sql = "SELECT count(*) FROM tasks WHERE id LIKE ? AND status = 'QUEUED'"
    back = store.query(db, sql, (prefix + "%",))[0][0]
    if back != length:
        raise RuntimeError(f"the retry brought back {back:,} of the chain's {length:,} tasks")


def claims(plain: Database, behind: Database, delayed: int) -> dict[str, Any]:
    """Time claim(1) with no delayed task and behind `delayed` ones, taking turns."""
    from app.statuses import Status
    from app.storage.store import Outcome

    stores = {
        name: open_app(db).extensions["store"]
        for name, db in (("none", plain), ("delayed", behind))
    }
    workers = {name: register_worker(s) for name, s in stores.items()}
    times: dict[str, list[float]] = {name: [] for name in stores}
    for turn in range(WARMUP + CLAIMS):
        for name, store_ in stores.items():
            began = time.perf_counter()
            (claim,) = store_.claim(workers[name], 1)
            spent = time.perf_counter() - began
            if not claim.id.startswith("r-"):
                raise RuntimeError(f"claimed {claim.id}, a task not yet due")
            store_.finish(claim, Outcome(Status.COMPLETED))
            if turn >= WARMUP:
                times[name].append(spent)
    for name, store_ in stores.items():
        store_.deregister(workers[name])
        store_.engine.dispose()
    return {
        "delayed": delayed,
        "claims": CLAIMS,
        "claim_ms": statistics.median(times["none"]) * 1e3,
        "claim_delayed_ms": statistics.median(times["delayed"]) * 1e3,
    }


def prune(db: Database, n: int) -> dict[str, Any]:
    """Prune `n` finished tasks 30 days old; rows per second and the longest chunk."""
    from app import faults
    from app.storage.retention import prune as run_prune

    app = open_app(db)
    engine = app.extensions["store"].engine
    marks: list[float] = []
    with faults.injected("prune.chunk_committed", lambda **_: marks.append(time.perf_counter())):
        began = time.perf_counter()
        deleted = run_prune(engine, timedelta(days=7))
        took = time.perf_counter() - began
    engine.dispose()
    if deleted != n:
        raise RuntimeError(f"prune deleted {deleted:,} of {n:,} tasks")
    chunks = [b - a for a, b in zip([began, *marks], marks, strict=False)]
    return {
        "pruned": deleted,
        "prune_rows_per_s": deleted / took,
        "prune_max_chunk_ms": max(chunks) * 1e3,
        "prune_chunks": len(chunks),
    }


def run(workdir: Path, sizes: Sizes, pg_url: str | None = None) -> dict[str, Any]:
    """Build every database, measure every figure; each part's failure is kept apart.

    With `pg_url`, every figure is measured on PostgreSQL too, under "pg".
    """
    results = _run(lambda name: _fresh(workdir, name), sizes)
    if pg_url:
        log("growth: PostgreSQL")
        results["pg"] = _run(lambda name: store.postgres_database(pg_url, f"growth_{name}"), sizes)
    return results


def _run(fresh: Callable[[str], Database], sizes: Sizes) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": [], "settings": vars(sizes)}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("cascade", lambda: _cascade(fresh, sizes.chain)),
        ("claim", lambda: _claims(fresh, sizes.delayed)),
        ("prune", lambda: _prune(fresh, sizes.prune)),
    ]
    for n in sorted(sizes.stored):
        parts.append((f"stored-{n}", lambda n=n: _reads(fresh, n)))  # type: ignore[misc]
    for name, action in parts:
        try:
            found = action()
        except Exception as exc:  # one failed figure must not cost the others
            results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(f"growth {name}: FAILED {results['errors'][name]}")
            continue
        if name.startswith("stored-"):
            results["sizes"].append(found)
        else:
            results[name] = found
        log(f"growth {name}: {_brief(found)}")
    return results


def _brief(found: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:,.2f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in found.items()
    )


def _fresh(workdir: Path, name: str) -> Database:
    return store.sqlite_database(workdir, f"growth-{name}")


def _drop(*dbs: Database) -> None:
    for db in dbs:
        if db.kind == "postgresql":
            admin, _, name = db.url.rpartition("/")
            store.drop_postgres(admin + "/postgres", name)
            continue
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db.path}{suffix}").unlink(missing_ok=True)


def _cascade(fresh: Callable[[str], Database], length: int) -> dict[str, Any]:
    fail_db, cancel_db, wide_db = fresh("fail"), fresh("cancel"), fresh("wide")
    try:
        build(fail_db, *_chain(length))
        build(cancel_db, *_chain(length))
        build(wide_db, *_fan_out(FAN_OUT * length))
        return {**cascade(fail_db, cancel_db, length), **fan_out(wide_db, FAN_OUT * length)}
    finally:
        _drop(fail_db, cancel_db, wide_db)


def _claims(fresh: Callable[[str], Database], delayed: int) -> dict[str, Any]:
    plain, behind = fresh("ready"), fresh("delayed")
    ready = 2 * (WARMUP + CLAIMS)
    try:
        build(plain, _claimable(0, ready), iter(()))
        build(behind, _claimable(delayed, ready), iter(()))
        return claims(plain, behind, delayed)
    finally:
        _drop(plain, behind)


def _prune(fresh: Callable[[str], Database], n: int) -> dict[str, Any]:
    db = fresh("prune")
    try:
        # Half of them depend on the one before, as tasks submitted in pairs would.
        build(db, _old(n), ((f"o-{i:07d}", f"o-{i - 1:07d}") for i in range(1, n, 2)))
        return prune(db, n)
    finally:
        _drop(db)


def _reads(fresh: Callable[[str], Database], n: int) -> dict[str, Any]:
    db = fresh(f"stored-{n}")
    try:
        built = build(db, _stored_rows(n), iter(()))
        log(f"growth: built {n:,} stored tasks ({db.kind}) in {built:.1f} s")
        return reads(db, n)
    finally:
        _drop(db)
