"""The figures as a table (each beside its target and the peers) and as JSON."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

Row = dict[str, Any]
HEADINGS = ("Figure", "SQLite", "Target", "Met", "PostgreSQL", "huey SQLite", "huey Redis")
SCALE_LIMIT = 1.5


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the median of every numeric field over `runs` (the first run's other fields)."""
    if not runs:
        return {}
    merged = dict(runs[0])
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(value, int | float) and all(isinstance(v, int | float) for v in values):
            merged[key] = statistics.median(values)  # type: ignore[type-var]
    return merged


def _pick(results: dict[str, Any], path: str) -> float | None:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, int | float) else None


def _row(
    results: dict[str, Any], figure: str, key: str, target: str = "", higher: bool = True
) -> Row:
    section, field = key.split(":")
    row: Row = {"figure": figure, "target": target, "higher_is_better": higher}
    row["sqlite"] = _pick(results, f"ours.sqlite.{section}.median.{field}")
    row["postgresql"] = _pick(results, f"ours.postgresql.{section}.median.{field}")
    row["huey_sqlite"] = _pick(results, f"peers.huey_sqlite.{section}.median.{field}")
    row["huey_redis"] = _pick(results, f"peers.huey_redis.{section}.median.{field}")
    row["met"] = _met(row["sqlite"], target)
    return row


# Issue 16: with tasks of real work, at least this many times Huey-SQLite's rate.
WORK_RATIO = 4


def _work_row(results: dict[str, Any], n: int) -> Row:
    """Tasks of 1 ms at a cap of 16, against Huey on SQLite with 16 threads."""
    row = _row(results, f"E2E, {n:,} tasks of 1 ms, 16 at once (tasks/s)", "work:tasks_per_s")
    if row["huey_sqlite"]:
        row["target"] = f">= {WORK_RATIO * row['huey_sqlite']:,.0f} ({WORK_RATIO}x huey SQLite)"
        row["met"] = _met(row["sqlite"], row["target"])
    return row


def _floor_rows(results: dict[str, Any]) -> list[Row]:
    """What one pass's statements cost alone (bench/floor.py), and the rates that bounds."""
    return [
        _row(
            results,
            "  ... floor: a pass's statements alone, 16 tasks (ms)",
            "floor:pass_ms",
            higher=False,
        ),
        _row(
            results,
            "  ... pages of WAL its commit writes (the rows and index pages it changes)",
            "floor:wal_pages",
            higher=False,
        ),
        _row(
            results,
            "  ... of which writing its task events (ms; the events stream's cost)",
            "floor:events_ms",
            higher=False,
        ),
        _row(
            results,
            "  ... ceiling at 16 slots, no-op tasks (tasks/s)",
            "floor:noop_ceiling_tasks_per_s",
        ),
        _row(
            results,
            "  ... ceiling at 16 slots, tasks of 1 ms (tasks/s)",
            "floor:work_ceiling_tasks_per_s",
        ),
        _row(
            results,
            "  ... bare design (a loop, 16 threads, no service code), no-op (tasks/s)",
            "bare:loop_noop_tasks_per_s",
        ),
        _row(
            results,
            "  ... CPU of its process a task, user and system (us)",
            "bare:loop_noop_cpu_us_per_task",
            higher=False,
        ),
        _row(
            results,
            "  ... ours the same way: the scheduler alone in process, no HTTP (tasks/s)",
            "alone:tasks_per_s",
        ),
        _row(
            results,
            "  ... CPU of its process a task, user and system (us)",
            "alone:cpu_us_per_task",
            higher=False,
        ),
        _row(
            results,
            "  ... of which its loop thread (us)",
            "alone:loop_cpu_us_per_task",
            higher=False,
        ),
        _row(
            results,
            "  ... CPU of a pass with nothing to do, ours (us)",
            "alone:empty_pass_us",
            higher=False,
        ),
        _row(
            results,
            "  ... the same, the floor's statements alone (us)",
            "alone:floor_empty_pass_us",
            higher=False,
        ),
        _row(
            results,
            "  ... bare design with its submission, 20,000 no-op tasks as e2e (tasks/s)",
            "bare:e2e_tasks_per_s",
        ),
        _row(
            results,
            "  ... bare design, tasks of 1 ms (tasks/s)",
            "bare:loop_work_tasks_per_s",
        ),
        _row(
            results,
            "  ... bare threads committing their own outcomes in groups, no-op (tasks/s)",
            "bare:group_noop_tasks_per_s",
        ),
        _row(
            results,
            "  ... bare threads committing in groups, tasks of 1 ms (tasks/s)",
            "bare:group_work_tasks_per_s",
        ),
    ]


def _met(value: float | None, target: str) -> bool | None:
    if value is None or not target:
        return None
    sign, _, bound = target.partition(" ")
    limit = float(bound.split()[0].replace(",", ""))
    return value >= limit if sign == ">=" else value <= limit


def rows(results: dict[str, Any]) -> list[Row]:
    """Return every figure of the run with its target and peers, in table order."""
    settings = results["settings"]
    n, hops, parents = settings["tasks"], settings["chain"], settings["fan_in"]
    table = [
        _row(
            results, f"E2E throughput, {n:,} no-op tasks (tasks/s)", "e2e:tasks_per_s", ">= 10,000"
        ),
        *_apart_rows(results.get("apart") or {}),
        *_minimal_rows(results, "e2e", "no-op"),
        _work_row(results, n),
        *_minimal_rows(results, "work", "of 1 ms"),
        *_floor_rows(results),
        _row(results, f"Chain of {hops:,}, per hop (ms)", "chain:per_hop_ms", "<= 1", False),
        _row(
            results,
            f"Fan-in {parents:,}->1: child handler start lag (ms)",
            "fan_in:handler_lag_ms",
            "<= 5",
            False,
        ),
        _row(
            results,
            "  ... lag to its recorded started_at (ms)",
            "fan_in:child_lag_ms",
            "<= 5",
            False,
        ),
    ]
    concurrency = settings["load_processes"] * settings["load_threads"]
    table.append(
        _row(results, f"POST /api/tasks, {concurrency} conns (req/s)", "load:requests_per_s")
    )
    table.append(_row(results, "  ... p50 latency (ms)", "load:p50_ms", higher=False))
    table.append(_row(results, "  ... p99 latency (ms)", "load:p99_ms", higher=False))
    table.append(
        _row(
            results,
            "Wait: answer after the task's finish, median (ms)",
            "wait:median_ms",
            higher=False,
        )
    )
    table.append(_row(results, "  ... p90 (ms)", "wait:p90_ms", higher=False))
    table += _submit_rows(results.get("submit") or {})
    table += _instance_rows(results.get("instances") or {})
    table += _insert_rows(results.get("insert") or {})
    table += _storage_rows(results.get("storage") or [])
    grown = results.get("growth") or {}
    table += _growth_rows(grown)
    table += [_on_postgresql(row) for row in _growth_rows(grown.get("pg") or {})]
    measured = ("sqlite", "postgresql", "huey_sqlite", "huey_redis")
    return [r for r in table if any(r.get(k) is not None for k in measured)]


# Issue 16: at 64 connections, at least this share of the rate at 8.
MANY_CONNS_SHARE = 0.9


def _apart_rows(apart: dict[str, Any]) -> list[Row]:
    """The e2e figure with the API in gunicorn and the scheduler in `flask scheduler run`."""
    value = _pick(apart, "e2e.median.tasks_per_s")
    if value is None:
        return []
    return [_measured("  ... API and scheduler in two processes (tasks/s)", value, "", True)]


def _minimal_rows(results: dict[str, Any], name: str, tasks: str) -> list[Row]:
    """The same e2e figure on the least service of the design (bench/minimal_service.py),
    and the CPU time the server process spent a task, ours and the least service's."""
    table = []
    minimal = results.get("minimal") or {}
    value = _pick(minimal, f"{name}.median.tasks_per_s")
    if value is not None:
        figure = f"  ... the least service of the design over HTTP, tasks {tasks} (tasks/s)"
        table.append(_measured(figure, value, "", True))
    cpu = f"{name}:server_cpu_us_per_task"
    ours = _row(results, "  ... CPU of the server process a task, ours (us)", cpu, "", False)
    # On PostgreSQL the database's work is in its own processes: not comparable.
    table.append({**ours, "postgresql": None})
    value = _pick(minimal, f"{name}.median.server_cpu_us_per_task")
    if value is not None:
        figure = "  ... CPU of the server process a task, the least service (us)"
        table.append(_measured(figure, value, "", False))
    return table


def _submit_rows(submit: dict[str, Any]) -> list[Row]:
    """Single submissions: ours against the baseline app, and ours at 64 connections."""

    def median(name: str, field: str) -> float | None:
        return _pick(submit, f"{name}.median.{field}")

    ours, baseline, many = (median(n, "requests_per_s") for n in ("ours_8", "minimal_8", "ours_64"))
    table: list[Row] = []
    if ours is None:
        return table
    target = f">= {baseline:,.0f} (the baseline)" if baseline else ""
    table.append(_measured("Single POSTs, 8 conns, with the baseline (req/s)", ours, target, True))
    if baseline is not None:
        label = "  ... baseline Flask + SQLAlchemy insert app, 8 conns (req/s)"
        table.append(_measured(label, baseline, "", True))
    p99 = median("ours_8", "p99_ms")
    if p99 is not None:
        table.append(_measured("  ... ours, p99 latency (ms)", p99, ""))
    if many is not None:
        share = f">= {MANY_CONNS_SHARE * ours:,.0f} ({MANY_CONNS_SHARE}x 8 conns)"
        table.append(_measured("Single POSTs, 64 conns (req/s)", many, share, True))
        p99 = median("ours_64", "p99_ms")
        if p99 is not None:
            table.append(_measured("  ... p99 latency (ms)", p99, ""))
    errors = sum(
        r.get("errors", 0)
        for name in ("ours_8", "ours_64")
        for r in submit.get(name, {}).get("runs", [])
    )
    table.append(_measured("  ... answers other than 201, ours (count)", errors, "<= 0"))
    return table


# Issue 16: PostgreSQL's batch insert, at least this many tasks per second.
PG_INSERT_RATE = 30_000


def _insert_rows(inserted: dict[str, Any]) -> list[Row]:
    """Batches of 10,000 through submit_batch, server side."""
    table: list[Row] = []
    label = "Batch submit, 10 x 10,000 tasks, server side (tasks/s)"
    sqlite = _pick(inserted, "sqlite.median.tasks_per_s")
    if sqlite is not None:
        table.append(_measured(label, sqlite, ""))
    pg = _pick(inserted, "postgresql.median.tasks_per_s")
    if pg is not None:
        table.append(_on_postgresql(_measured(label, pg, f">= {PG_INSERT_RATE:,}", True)))
    cpu = _pick(inserted, "postgresql.median.postgres_cpu_s")
    ceiling = _pick(inserted, "postgresql.median.server_ceiling")
    if cpu is not None and ceiling is not None:
        label = "  ... PostgreSQL's own CPU for the 100,000 tasks (s)"
        table.append(_on_postgresql(_measured(label, cpu, "")))
        label = "  ... ceiling were ours free: tasks / PostgreSQL's CPU (tasks/s)"
        table.append(_on_postgresql(_measured(label, ceiling, "", True)))
    return table


def _instance_rows(instances: dict[str, Any]) -> list[Row]:
    """E2E on PostgreSQL by number of instances (reported: two cores limit them all)."""
    table: list[Row] = []
    for name in sorted(instances, key=lambda n: int(n[1:])):
        rate = _pick(instances, f"{name}.median.tasks_per_s")
        share = _pick(instances, f"{name}.median.busiest_share")
        if rate is None:
            continue
        label = f"E2E, {name[1:]} instance(s) on one database (tasks/s)"
        table.append(_on_postgresql(_measured(label, rate, "")))
        if share is not None and name != "x1":
            table.append(
                _on_postgresql(_measured("  ... busiest instance's share (%)", share * 100, ""))
            )
        for field, label in (
            ("service_cores", "  ... cores busy in our processes"),
            ("postgresql_cores", "  ... cores busy in PostgreSQL"),
        ):
            cores = _pick(instances, f"{name}.median.{field}")
            if cores is not None:
                table.append(_on_postgresql(_measured(label, cores, "")))
    return table


def _storage_rows(sizes: list[dict[str, Any]]) -> list[Row]:
    table: list[Row] = []
    measured = [s for s in sizes if "error" not in s]
    for field, title, unit in (
        ("cycle_us", "Claim+finish cycle", "us"),
        ("normal_cycle_us", "  ... at SQLITE_SYNCHRONOUS=NORMAL", "us"),
        ("rss_mib", "Worker RSS", "MiB"),
        ("startup_s", "Server start-up", "s"),
    ):
        base = measured[0][field] if measured else None
        for i, size in enumerate(measured):
            target = ""
            if i and base is not None and field != "startup_s":
                target = f"<= {SCALE_LIMIT * base:,.0f} ({SCALE_LIMIT}x first)"
            label = f"{title}, {size['stored']:.0e} stored ({unit})".replace("e+0", "e")
            row: Row = {"figure": label, "sqlite": size[field], "target": target}
            row.update(higher_is_better=False, met=_met(size[field], target))
            table.append(row)
    return table


# Issue 15's targets: a cascade of a 20,000-deep chain, counts and pages at 10^6 stored.
CASCADE_LIMIT_S = 0.5
READ_LIMIT_MS = 5.0
PRUNE_RATE = 25_000
PRUNE_CHUNK_MS = 50
GROWTH_READS = (
    ("queued_count_ms", "Admission's QUEUED count"),
    ("metrics_ms", "GET /metrics"),
    ("dashboard_counts_ms", "GET /dashboard/counts"),
    ("list_status_ms", "Page of 100, status=FAILED"),
    ("list_type_ms", "Page of 100, type=rare"),
    ("list_status_type_ms", "Page of 100, status=COMPLETED&type=rare"),
    ("list_status_batch_ms", "Page of 100, status=FAILED&batch_id"),
)


def _measured(figure: str, value: float, target: str, higher: bool = False) -> Row:
    row: Row = {"figure": figure, "sqlite": value, "target": target, "higher_is_better": higher}
    row["met"] = _met(value, target)
    return row


def _on_postgresql(row: Row) -> Row:
    """Move a growth row measured on PostgreSQL to the PostgreSQL column."""
    value = row.pop("sqlite")
    return {**row, "figure": row["figure"] + " [PostgreSQL]", "sqlite": None, "postgresql": value}


def _growth_rows(growth: dict[str, Any]) -> list[Row]:
    table: list[Row] = []
    if "cascade" in growth:
        c = growth["cascade"]
        limit = f"<= {CASCADE_LIMIT_S}"
        table.append(
            _measured(f"Failure cascade, chain of {c['chain']:,} (s)", c["fail_cascade_s"], limit)
        )
        table.append(_measured("Retry of that chain's root (s)", c["retry_cascade_s"], limit))
        table.append(
            _measured(f"Cancel of a {c['chain']:,} chain's root (s)", c["cancel_cascade_s"], limit)
        )
        if "bare_write_s" in c:  # the floor: the same rows written by one bare UPDATE
            label = "  ... one bare UPDATE of those rows (s)"
            table.append(_measured(label, c["bare_write_s"], ""))
        if "blockers_waiting_s" in c:  # the walks down to the chain's root
            label = "Blockers of that chain's last task, waiting (s)"
            table.append(_measured(label, c["blockers_waiting_s"], limit))
            label = "Blockers of that chain's last task, cut off (s)"
            table.append(_measured(label, c["blockers_stopped_s"], limit))
            label = "Retry of that chain's last task, refused with its root (s)"
            table.append(_measured(label, c["retry_refused_s"], limit))
        label = f"Failure cascade, fan-out of {c['fan_out']:,} (rows/s)"
        table.append(_measured(label, c["fan_out_rows_per_s"], ""))
    if "claim" in growth:
        c = growth["claim"]
        table.append(_measured("Claim, nothing delayed (ms)", c["claim_ms"], ""))
        target = f"<= {SCALE_LIMIT * c['claim_ms']:.2f} ({SCALE_LIMIT}x none)"
        label = f"Claim behind {c['delayed']:,} delayed (ms)"
        table.append(_measured(label, c["claim_delayed_ms"], target))
    measured = growth.get("sizes") or []
    for field, title in GROWTH_READS:
        base = measured[0][field] if measured else None
        for i, size in enumerate(measured):
            target = f"<= {READ_LIMIT_MS:g}"
            # The counts must also stay flat (1.5x of the smallest table); a page of
            # 100 only under 5 ms: its cost is its 100 rows, read by an index.
            if i and base is not None and not field.startswith("list_"):
                limit = min(READ_LIMIT_MS, SCALE_LIMIT * base)
                target = f"<= {limit:.2f} ({READ_LIMIT_MS:g}; {SCALE_LIMIT}x first)"
            label = f"{title}, {size['stored']:.0e} stored (ms)".replace("e+0", "e")
            table.append(_measured(label, size[field], target))
    if "prune" in growth:
        p = growth["prune"]
        label = f"Prune, {p['pruned']:,} tasks (rows/s)"
        table.append(_measured(label, p["prune_rows_per_s"], f">= {PRUNE_RATE:,}", True))
        table.append(
            _measured("  ... longest chunk (ms)", p["prune_max_chunk_ms"], f"<= {PRUNE_CHUNK_MS}")
        )
    return table


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _peer(row: Row, key: str) -> str:
    peer, ours = row.get(key), row.get("sqlite")
    if peer is None:
        return "-"
    ratio = f" ({ours / peer:.2f}x)" if ours is not None and peer else ""
    return _number(peer) + ratio


def table(table_rows: list[Row]) -> str:
    """Return the rows as an aligned text table."""
    cells = [HEADINGS] + [
        (
            r["figure"],
            _number(r.get("sqlite")),
            r.get("target") or "-",
            {True: "yes", False: "NO", None: "-"}[r.get("met")],
            _number(r.get("postgresql")),
            _peer(r, "huey_sqlite"),
            _peer(r, "huey_redis"),
        )
        for r in table_rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADINGS))]
    lines = []
    for index, cell in enumerate(cells):
        parts = [cell[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(cell[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(table_rows: list[Row]) -> str:
    """Return the rows as a Markdown table (for bench/README.md)."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|---" + "|---:" * (len(HEADINGS) - 1) + "|"]
    for r in table_rows:
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        cells = [r["figure"].replace("...", "…").strip(), _number(r.get("sqlite"))]
        cells += [r.get("target") or "-", met, _number(r.get("postgresql"))]
        cells += [_peer(r, "huey_sqlite"), _peer(r, "huey_redis")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(table_rows: list[Row], notes: list[str], path: Path) -> None:
    """Write the table as Markdown, with `notes` (machine, settings) under it."""
    lines = [markdown(table_rows), ""]
    lines += [line for note in notes for line in (note.replace("\n", "  \n"), "")]
    path.write_text("\n".join(lines))


def write_json(results: dict[str, Any], path: Path) -> Path:
    """Write every figure, run and setting to `path` and to a dated copy beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str) + "\n"
    path.write_text(text)
    dated = path.with_name(f"run-{time.strftime('%Y%m%d-%H%M%S')}.json")
    dated.write_text(text)
    return dated
