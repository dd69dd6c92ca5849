#!/usr/bin/env python3
"""End-to-end check of a running task scheduler over HTTP; the successor of `test-api.js`.

Usage: python scripts/integration_test.py [--base-url URL] [--timeout S] [--max-concurrent N]
                                         [--token TOKEN] [--from-settings]
Standard library only: its HTTP calls go through app/client.py, loaded by its path (see
load_client); --from-settings (what `make integration` passes) also reads the service's
settings, with the project's packages. Exit 0 when every check passed, 1 when any failed,
2 when unreachable.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any


def load_client() -> ModuleType:
    """Load app/client.py by its path, as the module `task_scheduler_client`.

    `import app.client` would first run app/__init__.py, which imports Flask, and this
    script must run with the standard library alone; app/client.py imports nothing else.
    """
    name = "task_scheduler_client"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "app" / "client.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the API client from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their class's module up there
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:  # the same module, seen by its package name
    from app.client import ApiError, Client, ClientError, ConnectionFailed, Task, parse_time
else:
    _client = load_client()
    ApiError, Client, ClientError = _client.ApiError, _client.Client, _client.ClientError
    ConnectionFailed, Task, parse_time = _client.ConnectionFailed, _client.Task, _client.parse_time

TERMINAL = frozenset({"COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"})
STATUSES = TERMINAL | {"QUEUED", "RUNNING"}
FIRST_FIELDS = ("id", "type", "duration_ms", "status", "dependencies", "created_at", "updated_at")
EXTRA_FIELDS = ("payload", "result", "error", "error_code", "attempts", "worker")
TIME_FIELDS = ("created_at", "updated_at", "started_at", "finished_at")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
REQUEST_TIMEOUT_S = 10.0

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


def parse_ts(value: object) -> datetime | None:
    """Parse an ISO 8601 timestamp (a missing zone means UTC), or None when malformed."""
    try:
        return parse_time(value)
    except ValueError:
        return None


def read_cap(client: Client, override: int | None) -> int | str:
    """Return the concurrency cap, or a message saying why the server cannot be tested."""
    try:
        body = client.request("GET", "/health", retry=False).body
    except ApiError as exc:
        return f"GET /health answered {exc.status}: {short(exc.message)}"
    if not isinstance(body, dict):
        return f"GET /health answered {short(body)}"
    scheduler = body.get("scheduler")
    scheduler = scheduler if isinstance(scheduler, dict) else {}
    if scheduler.get("state") != "running":
        state = scheduler.get("state")
        return f"scheduler state is {state!r}, not 'running': no task would run; is it enabled?"
    if override is not None:
        return override
    cap = scheduler.get("max_concurrent")
    if type(cap) is not int or cap < 1:
        return f"GET /health gave no usable scheduler.max_concurrent: {short(body)}"
    return cap


def task_body(prefix: str, key: str) -> dict[str, Any]:
    """Build the submission body of one task of the DAG."""
    duration, deps, fails = DAG[key]
    dependencies = [prefix + dep for dep in deps]
    body = {"id": prefix + key, "type": "simulate", "duration_ms": duration}
    return {**body, "dependencies": dependencies, "payload": {"fail": fails}}


def submit_dag(checks: Checks, client: Client, prefix: str) -> bool:
    """Submit every task of the DAG in dependency order and check each 201 answer."""
    problems = []
    for key in DAG:
        try:  # raw, for the status and the Location header; with ids, safe to repeat
            resp = client.request("POST", "/api/tasks", task_body(prefix, key), retry=True)
        except ApiError as exc:  # e.g. 401: the rest would fail alike
            problems.append(f"{key}: {exc}")
            break
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
    checks: Checks,
    name: str,
    request: Callable[[], object],
    status: int,
    code: str,
    *,
    names: str = "",
) -> None:
    """Check that `request` raises the API error `status` and `code` (the client gives any
    other body the code `http_error`), and what its details name."""
    try:
        got = request()
    except ApiError as exc:
        ok = exc.status == status and exc.code == code and names in str(exc.details)
        checks.check(name, ok, f"got {exc.status} {exc.code}: {short(exc.message)}")
    else:
        checks.check(name, False, f"got a success: {short(str(got))}")


def check_api(checks: Checks, client: Client, prefix: str) -> None:
    """Check replay, conflict, validation, status and not-found behaviour."""
    first = task_body(prefix, "A")
    resp = client.request("POST", "/api/tasks", first, retry=True)
    body = resp.body if isinstance(resp.body, dict) else {}
    ok = resp.status == 200 and body.get("id") == first["id"]
    checks.check("identical replay answers 200 with the task", ok, f"got {resp.status}")
    name = "changed body answers 409 duplicate_id naming duration_ms"
    changed = partial(client.submit, {**first, "duration_ms": 999})
    check_error(checks, name, changed, 409, "duplicate_id", names="duration_ms")
    missing = prefix + "no-such-task"
    orphan = {**task_body(prefix, "A"), "id": prefix + "orphan", "dependencies": [missing]}
    name = "unknown dependency answers 400 unknown_dependency naming it"
    check_error(
        checks, name, partial(client.submit, orphan), 400, "unknown_dependency", names=missing
    )
    for bad in ("5", True):
        invalid = partial(client.submit, {**orphan, "dependencies": [], "duration_ms": bad})
        name = f"duration_ms {json.dumps(bad)} answers 400 validation_error"
        check_error(checks, name, invalid, 400, "validation_error", names="duration_ms")
    resp = client.request("GET", f"/api/tasks/{first['id']}/status")
    body = resp.body if isinstance(resp.body, dict) else {}
    ok = resp.status == 200 and body.get("id") == first["id"] and body.get("status") in STATUSES
    checks.check("GET /status answers {id, status}", ok, f"got {resp.status} {short(resp.body)}")
    status = partial(client.request, "GET", f"/api/tasks/{missing}/status")
    check_error(
        checks, "GET /api/tasks/<prefix>no-such-task/status answers 404", status, 404, "not_found"
    )
    task = partial(client.get, missing)
    check_error(checks, "GET /api/tasks/<prefix>no-such-task answers 404", task, 404, "not_found")


def wait_terminal(
    client: Client, ids: list[str], timeout: float
) -> tuple[dict[str, Task], list[str]]:
    """Wait for every task until all are terminal or the deadline passes (each wait a long
    poll of the server, or polling on an older one); return the tasks and those pending."""
    deadline = time.monotonic() + timeout
    tasks: dict[str, Task] = {}
    for task_id in ids:
        try:
            tasks[task_id] = client.wait(task_id, max(0.0, deadline - time.monotonic()))
        except ApiError as exc:
            print(f"      waiting for {task_id}: {exc}")
    return tasks, [i for i in ids if i not in tasks or not tasks[i].terminal]


def check_fields(checks: Checks, client: Client, ids: list[str]) -> None:
    """Check each task's field order, extra fields and timestamp format, as sent."""
    problems = []
    tasks = {task_id: client.request("GET", f"/api/tasks/{task_id}").body for task_id in ids}
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


def check_list(checks: Checks, client: Client, count: int) -> None:
    """Check the list endpoint answers a bare array, newest first, without payload/result."""
    resp = client.request("GET", "/api/tasks", query={"limit": str(count)})
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
        task = tasks.get(prefix + key)
        expected = EXPECTED.get(key, "COMPLETED")
        if task is None or task.status != expected:
            wrong.append(f"{key} is {task and task.status!r}, expected {expected}")
        want = 0 if expected == "UPSTREAM_FAILED" else 1
        if task is None or task.attempts != want:
            attempts.append(f"{key} has {task and task.attempts!r}, expected {want}")
    name = "final statuses: F FAILED, G and H UPSTREAM_FAILED, the rest COMPLETED"
    checks.check(name, not wrong, "; ".join(wrong))
    name = "attempts: 1 for tasks that ran, 0 for UPSTREAM_FAILED ones"
    checks.check(name, not attempts, "; ".join(attempts))
    failed = tasks.get(prefix + "F")
    checks.check("F has an error message", bool(failed and failed.error), short(str(failed)))
    codes = {k: getattr(tasks.get(prefix + k), "error_code", None) for k in ("G", "H")}
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
    got = {key: task for key in DAG if (task := tasks.get(prefix + key)) is not None}
    spans = {
        k: (t.started_at, t.finished_at) for k, t in got.items() if t.started_at and t.finished_at
    }
    ran = [k for k, task in got.items() if task.status in ("COMPLETED", "FAILED")]
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


def _from_settings(args: argparse.Namespace, given: list[str]) -> None:
    """Fill what the command line left out from the service's own settings (this needs
    the project's packages: run from the checkout, with its virtual environment)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app.config import Settings

    settings = Settings.from_env()
    if not any(a.startswith("--base-url") for a in given):
        args.base_url = f"http://{_reachable(settings.host)}:{settings.port}"
    if not any(a.startswith("--token") for a in given) and args.token is None:
        args.token = settings.api_token or None


def _reachable(host: str) -> str:
    """Return the address to call a server bound to `host` at, as a URL writes it: the
    loopback of its family for a wildcard, an IPv6 address in brackets."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Check a running task scheduler end to end.")
    parser.add_argument("--base-url", default="http://127.0.0.1:3000", help="server root URL")
    help_settings = (
        "take the port and the token from the service's settings (the environment, then "
        ".env), as `make run` serves, unless --base-url or --token is given"
    )
    parser.add_argument("--from-settings", action="store_true", help=help_settings)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for tasks")
    help_cap = "the concurrency cap (default: scheduler.max_concurrent from GET /health)"
    parser.add_argument("--max-concurrent", type=int, help=help_cap)
    help_token = "the server's API_TOKEN, sent as a bearer token (default: $API_TOKEN)"
    parser.add_argument("--token", default=os.environ.get("API_TOKEN") or None, help=help_token)
    args = parser.parse_args(argv)
    if args.from_settings:
        _from_settings(args, argv or sys.argv[1:])
    if args.timeout <= 0 or (args.max_concurrent is not None and args.max_concurrent < 1):
        parser.error("--timeout and --max-concurrent must be positive")
    return args


def run(client: Client, args: argparse.Namespace) -> int:
    """Run every check against the client's server and return the exit status."""
    cap = read_cap(client, args.max_concurrent)
    if isinstance(cap, str):
        print(f"FAIL  {cap}")
        return 1
    prefix = f"it-{uuid.uuid4().hex[:8]}-"
    print(f"server {client.base_url}, max_concurrent {cap}, run prefix {prefix}")
    checks = Checks()
    if submit_dag(checks, client, prefix):
        check_api(checks, client, prefix)
        ids = [prefix + key for key in DAG]
        print(f"      waiting up to {args.timeout:g} s for {len(ids)} tasks to finish")
        tasks, pending = wait_terminal(client, ids, args.timeout)
        waiting = [task_id.removeprefix(prefix) for task_id in pending]
        name = f"all tasks terminal within {args.timeout:g} s"
        checks.check(name, not pending, f"still waiting on {waiting}")
        check_fields(checks, client, list(tasks))
        check_list(checks, client, len(DAG))
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
    client = Client(args.base_url, token=args.token, timeout=REQUEST_TIMEOUT_S)
    try:
        return run(client, args)
    except ConnectionFailed as exc:
        print(f"ERROR: cannot reach the server: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:  # an answer no check expected (a 401: give --token)
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
