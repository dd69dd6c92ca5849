#!/usr/bin/env python3
"""End-to-end check of a running task scheduler over HTTP; the successor of `test-api.js`.

Usage: python scripts/integration_test.py [--base-url URL] [--timeout S] [--max-concurrent N]
Standard library only. Exit 0 when every check passed, 1 when any failed, 2 when unreachable.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"})
STATUSES = TERMINAL | {"QUEUED", "RUNNING"}
FIRST_FIELDS = ("id", "type", "duration_ms", "status", "dependencies", "created_at", "updated_at")
EXTRA_FIELDS = ("payload", "result", "error", "error_code", "attempts", "worker")
TIME_FIELDS = ("created_at", "updated_at", "started_at", "finished_at")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
REQUEST_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.2

# key -> (duration_ms, dependency keys, fails); listed in dependency order, so submitted in it.
# After A, eight tasks are eligible at once (B, C, F, L1-L5) so the concurrency cap is reached.
DAG: dict[str, tuple[int, tuple[str, ...], bool]] = {
    "A": (200, (), False),
    "B": (300, ("A",), False),
    "C": (150, ("A",), False),
    "D": (200, ("B", "C"), False),
    "F": (100, ("A",), True),
    "G": (100, ("F",), False),
    "H": (100, ("G",), False),
    "I": (250, (), False),
    "J": (200, ("I",), False),
    **{f"L{n}": (400, ("A",), False) for n in range(1, 6)},
}
EXPECTED = {"F": "FAILED", "G": "UPSTREAM_FAILED", "H": "UPSTREAM_FAILED"}  # others COMPLETED
Task = dict[str, Any]


class UnreachableError(Exception):
    """The server could not be reached or broke the connection."""


@dataclass
class Response:
    """One HTTP answer: status, headers and the decoded JSON body (raw text if not JSON)."""

    status: int
    headers: Any
    body: Any


@dataclass
class Checks:
    """Count checks and print a PASS/FAIL line for each as it is made."""

    total: int = 0
    failed: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record one check and print its outcome."""
        self.total += 1
        if ok:
            print(f"PASS  {name}")
        else:
            self.failed.append(name)
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""))
        return ok


def short(value: object, limit: int = 200) -> str:
    """Render a value as compact JSON, cut to a readable length."""
    text = " ".join(value.split()) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def call(base: str, method: str, path: str, body: object | None = None) -> Response:
    """Send one request, JSON-encoding the body, and return the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Accept": "application/json", "Content-Type": "application/json"}
    request = urllib.request.Request(base + path, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UnreachableError(f"{method} {base}{path}: {reason}") from exc
    try:
        return Response(status, headers, json.loads(raw))
    except ValueError:
        return Response(status, headers, raw.decode("utf-8", "replace"))


def parse_ts(value: object) -> datetime | None:
    """Parse an ISO 8601 timestamp, or return None when absent or malformed."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    # a missing zone is reported by check_fields; assume UTC so comparisons cannot raise
    return parsed.replace(tzinfo=UTC) if parsed and parsed.tzinfo is None else parsed


def read_cap(base: str, override: int | None) -> int | str:
    """Return the concurrency cap, or a message saying why the server cannot be tested."""
    resp = call(base, "GET", "/health")
    if resp.status != 200 or not isinstance(resp.body, dict):
        return f"GET /health answered {resp.status}: {short(resp.body)}"
    scheduler = resp.body.get("scheduler")
    scheduler = scheduler if isinstance(scheduler, dict) else {}
    if scheduler.get("state") != "running":
        state = scheduler.get("state")
        return f"scheduler state is {state!r}, not 'running': no task would run; is it enabled?"
    if override is not None:
        return override
    cap = scheduler.get("max_concurrent")
    if type(cap) is not int or cap < 1:
        return f"GET /health gave no usable scheduler.max_concurrent: {short(resp.body)}"
    return cap


def task_body(prefix: str, key: str) -> dict[str, Any]:
    """Build the submission body of one task of the DAG."""
    duration, deps, fails = DAG[key]
    dependencies = [prefix + dep for dep in deps]
    body = {"id": prefix + key, "type": "simulate", "duration_ms": duration}
    return {**body, "dependencies": dependencies, "payload": {"fail": fails}}


def submit_dag(checks: Checks, base: str, prefix: str) -> bool:
    """Submit every task of the DAG in dependency order and check each 201 answer."""
    problems = []
    for key in DAG:
        resp = call(base, "POST", "/api/tasks", task_body(prefix, key))
        body = resp.body if isinstance(resp.body, dict) else {}
        location = resp.headers.get("Location") or ""
        if resp.status != 201 or body.get("id") != prefix + key:
            problems.append(f"{key}: {resp.status} {short(resp.body)}")
        elif not location.endswith(f"/api/tasks/{prefix}{key}"):
            problems.append(f"{key}: Location header {location!r}")
        elif body.get("status") not in ("QUEUED", "UPSTREAM_FAILED"):
            problems.append(f"{key}: status {body.get('status')!r} on submission")
    return checks.check(
        f"submit {len(DAG)} tasks: 201 + Location", not problems, "; ".join(problems)
    )


def check_error(
    checks: Checks, name: str, resp: Response, status: int, code: str, *, names: str = ""
) -> None:
    """Check an error's status, code, {error, code, details} shape, and what details name."""
    body = resp.body if isinstance(resp.body, dict) else {}
    details = body.get("details", {})
    shaped = isinstance(body.get("error"), str) and isinstance(details, dict)
    ok = resp.status == status and body.get("code") == code and shaped and names in str(details)
    checks.check(name, ok, f"got {resp.status} {short(resp.body)}")


def check_api(checks: Checks, base: str, prefix: str) -> None:
    """Check replay, conflict, validation, status and not-found behaviour."""
    first = task_body(prefix, "A")
    resp = call(base, "POST", "/api/tasks", first)
    body = resp.body if isinstance(resp.body, dict) else {}
    ok = resp.status == 200 and body.get("id") == first["id"]
    checks.check("identical replay answers 200 with the task", ok, f"got {resp.status}")
    resp = call(base, "POST", "/api/tasks", {**first, "duration_ms": 999})
    name = "changed body answers 409 duplicate_id naming duration_ms"
    check_error(checks, name, resp, 409, "duplicate_id", names="duration_ms")
    missing = prefix + "no-such-task"
    orphan = {**task_body(prefix, "A"), "id": prefix + "orphan", "dependencies": [missing]}
    resp = call(base, "POST", "/api/tasks", orphan)
    name = "unknown dependency answers 400 unknown_dependency naming it"
    check_error(checks, name, resp, 400, "unknown_dependency", names=missing)
    for bad in ("5", True):
        resp = call(base, "POST", "/api/tasks", {**orphan, "dependencies": [], "duration_ms": bad})
        name = f"duration_ms {json.dumps(bad)} answers 400 validation_error"
        check_error(checks, name, resp, 400, "validation_error", names="duration_ms")
    resp = call(base, "GET", f"/api/tasks/{first['id']}/status")
    body = resp.body if isinstance(resp.body, dict) else {}
    ok = resp.status == 200 and body.get("id") == first["id"] and body.get("status") in STATUSES
    checks.check("GET /status answers {id, status}", ok, f"got {resp.status} {short(resp.body)}")
    for path in (f"/api/tasks/{missing}/status", f"/api/tasks/{missing}"):
        resp = call(base, "GET", path)
        name = f"GET {path.replace(prefix, '<prefix>')} answers 404"
        check_error(checks, name, resp, 404, "not_found")


def wait_terminal(base: str, ids: list[str], timeout: float) -> tuple[dict[str, Task], list[str]]:
    """Poll every task until all are terminal or the deadline passes; return tasks, pending."""
    deadline = time.monotonic() + timeout
    tasks: dict[str, Task] = {}
    pending = list(ids)
    while True:
        for task_id in pending:
            resp = call(base, "GET", f"/api/tasks/{task_id}")
            if resp.status == 200 and isinstance(resp.body, dict):
                tasks[task_id] = resp.body
        pending = [i for i in ids if tasks.get(i, {}).get("status") not in TERMINAL]
        if not pending or time.monotonic() >= deadline:
            return tasks, pending
        time.sleep(POLL_INTERVAL_S)


def check_fields(checks: Checks, tasks: dict[str, Task]) -> None:
    """Check each task's field order, extra fields and timestamp format."""
    problems = []
    for task_id, task in tasks.items():
        if tuple(task)[: len(FIRST_FIELDS)] != FIRST_FIELDS:
            problems.append(f"{task_id} fields start {list(task)[: len(FIRST_FIELDS)]}")
        if missing := [name for name in EXTRA_FIELDS + TIME_FIELDS if name not in task]:
            problems.append(f"{task_id} lacks {missing}")
        for name in TIME_FIELDS:
            value = task.get(name)
            if value is not None and not (isinstance(value, str) and TIMESTAMP.fullmatch(value)):
                problems.append(f"{task_id}.{name} = {value!r}")
    name = "task fields in order, timestamps like 2026-11-27T14:19:54.502Z"
    checks.check(name, bool(tasks) and not problems, "; ".join(problems[:5]) or "no tasks")


def check_list(checks: Checks, base: str, count: int) -> None:
    """Check the list endpoint answers a bare array, newest first, without payload/result."""
    resp = call(base, "GET", f"/api/tasks?limit={count}")
    items = resp.body if isinstance(resp.body, list) else []
    ok = resp.status == 200 and isinstance(resp.body, list) and 0 < len(items) <= count
    stamps = [parse_ts(item.get("created_at")) for item in items if isinstance(item, dict)]
    known = [stamp for stamp in stamps if stamp is not None]
    ok = ok and len(known) == len(items) and all(a >= b for a, b in itertools.pairwise(known))
    ok = ok and not any("payload" in item or "result" in item for item in items)
    name = "GET /api/tasks?limit=N: bare array, newest first, no payload/result"
    checks.check(name, ok, f"got {resp.status} {short(resp.body)}")


def check_statuses(checks: Checks, prefix: str, tasks: dict[str, Task]) -> None:
    """Check each task's final status, error fields and attempt count."""
    wrong, attempts = [], []
    for key in DAG:
        task = tasks.get(prefix + key, {})
        expected = EXPECTED.get(key, "COMPLETED")
        if task.get("status") != expected:
            wrong.append(f"{key} is {task.get('status')!r}, expected {expected}")
        want = 0 if expected == "UPSTREAM_FAILED" else 1
        if task.get("attempts") != want:
            attempts.append(f"{key} has {task.get('attempts')!r}, expected {want}")
    name = "final statuses: F FAILED, G and H UPSTREAM_FAILED, the rest COMPLETED"
    checks.check(name, not wrong, "; ".join(wrong))
    name = "attempts: 1 for tasks that ran, 0 for UPSTREAM_FAILED ones"
    checks.check(name, not attempts, "; ".join(attempts))
    failed = tasks.get(prefix + "F", {})
    checks.check("F has an error message", bool(failed.get("error")), short(failed))
    codes = {k: tasks.get(prefix + k, {}).get("error_code") for k in ("G", "H")}
    ok = set(codes.values()) == {"upstream_failed"}
    checks.check("G and H have error_code upstream_failed", ok, short(codes))


def max_overlap(spans: list[tuple[datetime, datetime]]) -> int:
    """Return the most intervals open at one instant; an end at t closes before a start at t."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def check_timing(checks: Checks, prefix: str, tasks: dict[str, Task], cap: int) -> None:
    """Check start-after-dependencies, the concurrency cap, and work after F failed."""
    got = {key: tasks.get(prefix + key, {}) for key in DAG}
    times = {
        k: (parse_ts(t.get("started_at")), parse_ts(t.get("finished_at"))) for k, t in got.items()
    }
    spans = {k: (start, end) for k, (start, end) in times.items() if start and end}
    ran = [k for k, task in got.items() if task.get("status") in ("COMPLETED", "FAILED")]
    problems = [f"{k} ran without started_at/finished_at" for k in ran if k not in spans]
    for key, (start, end) in spans.items():
        if end < start:
            problems.append(f"{key} finished before it started")
        for dep in DAG[key][1]:
            if dep not in spans or start < spans[dep][1]:
                problems.append(f"{key} started before {dep} finished")
    name = "every task started at or after its dependencies finished"
    checks.check(name, not problems, "; ".join(problems))
    peak = max_overlap(list(spans.values()))
    print(f"      observed max concurrency {peak} (cap {cap})")
    checks.check(f"at most {cap} tasks ran at once", peak <= cap, f"observed {peak}")
    f_end = spans.get("F", (None, None))[1]
    later = [k for k, (start, _) in spans.items() if f_end is not None and start >= f_end]
    checks.check("independent tasks kept starting after F failed", bool(later), "none did")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Check a running task scheduler end to end.")
    parser.add_argument("--base-url", default="http://127.0.0.1:3000", help="server root URL")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for tasks")
    help_cap = "the concurrency cap (default: scheduler.max_concurrent from GET /health)"
    parser.add_argument("--max-concurrent", type=int, help=help_cap)
    args = parser.parse_args(argv)
    if args.timeout <= 0 or (args.max_concurrent is not None and args.max_concurrent < 1):
        parser.error("--timeout and --max-concurrent must be positive")
    return args


def run(base: str, args: argparse.Namespace) -> int:
    """Run every check against the server at base and return the exit status."""
    cap = read_cap(base, args.max_concurrent)
    if isinstance(cap, str):
        print(f"FAIL  {cap}")
        return 1
    prefix = f"it-{uuid.uuid4().hex[:8]}-"
    print(f"server {base}, max_concurrent {cap}, run prefix {prefix}")
    checks = Checks()
    if submit_dag(checks, base, prefix):
        check_api(checks, base, prefix)
        ids = [prefix + key for key in DAG]
        print(f"      waiting up to {args.timeout:g} s for {len(ids)} tasks to finish")
        tasks, pending = wait_terminal(base, ids, args.timeout)
        waiting = [task_id.removeprefix(prefix) for task_id in pending]
        name = f"all tasks terminal within {args.timeout:g} s"
        checks.check(name, not pending, f"still waiting on {waiting}")
        check_fields(checks, tasks)
        check_list(checks, base, len(DAG))
        check_statuses(checks, prefix, tasks)
        check_timing(checks, prefix, tasks, cap)
    passed = checks.total - len(checks.failed)
    print(f"\n{passed}/{checks.total} checks passed (run prefix {prefix})")
    for name in checks.failed:
        print(f"  failed: {name}")
    return 0 if not checks.failed else 1


def main(argv: list[str] | None = None) -> int:
    """Run the integration test and return its exit status."""
    args = parse_args(argv)
    base = args.base_url.rstrip("/")
    try:
        return run(base, args)
    except UnreachableError as exc:
        print(f"ERROR: cannot reach the server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
