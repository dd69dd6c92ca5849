"""The audit of a crash loop (scripts/crash_loop.py): the end state against the history.

Pure functions over what the run left: the planned tasks, the ids the client was told were
accepted, the stored rows and edges, the ledger's runs, and the pids that were SIGKILLed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.ledger_handlers import added_ids, fails_at

TERMINAL = frozenset({"COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"})


@dataclass
class Stored:
    """What the database holds at the end."""

    tasks: dict[str, Any]
    deps: dict[str, set[str]]
    instances: int
    orphan_edges: int
    # Each task's attempt history: attempt number -> outcome (None: not read).
    attempts: dict[str, dict[int, str]] | None = None


# -- the ledger -------------------------------------------------------------------------------


@dataclass
class Run:
    """One attempt as the ledger saw it: the process, its start and end (ns, wall clock)."""

    pid: int
    start: int
    end: int | None = None


def read_ledger(path: Path) -> tuple[dict[tuple[str, int], Run], list[str]]:
    """Return the runs keyed by (task, attempt), and what was wrong with the lines."""
    runs: dict[tuple[str, int], Run] = {}
    problems: list[str] = []
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:  # every writer is dead by now: each line is whole
        task_id, attempt, pid, event, at = line.split()
        key = (task_id, int(attempt))
        run = runs.get(key)
        if event == "start":
            if run is not None:
                problems.append(f"{key} started twice (pids {run.pid} and {pid})")
            else:
                runs[key] = Run(int(pid), int(at))
        elif run is None or run.end is not None or run.pid != int(pid):
            problems.append(f"{key} ended without a start of its own (pid {pid})")
        else:
            run.end = int(at)
    return runs, problems


# -- the audit --------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1)


def ns(moment: datetime | None) -> int:
    """Return a stored naive UTC time as wall-clock nanoseconds (0 for none)."""
    if moment is None:
        return 0
    delta = moment - EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def worker_pid(worker: str | None) -> int:
    """Return the pid inside an instance id (`host-pid-random`), or 0."""
    return int(worker.rsplit("-", 2)[1]) if worker else 0


@dataclass
class Audit:
    """Violations found, by kind, and counts for the summary."""

    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lost_attempts: int = 0

    def fail(self, kind: str, message: str) -> None:
        self.violations[kind].append(message)


def audit(
    plan: list[dict[str, Any]],
    accepted: set[str],
    stored: Stored,
    runs: dict[tuple[str, int], Run],
    killed: set[int],
) -> Audit:
    """Check the database and the ledger against the plan and what the client was told.

    The attempt rule (docs/semantics.md#attempts-and-the-retry-budget): every attempt started
    (`attempts`, never decreasing) ends in one of three ways: its handler returns (COMPLETED),
    its handler fails, or its instance dies while it is RUNNING, which the next start recovers
    as an *interrupted* attempt that counts against the retry budget like any failure (retried
    if the budget allows, else FAILED `interrupted`). Only a graceful stop's requeue is not a
    failure, and this loop stops gracefully only once everything is terminal. So with no user
    retry: attempts <= max_attempts, kills spend the budget and never extend it; a COMPLETED
    task failed attempts - 1 times; a FAILED task used all max_attempts; every attempt before
    the last failed by design, or was lost to a kill.
    """
    found = Audit()
    planned = {body["id"]: body for body in plan}
    added = check_added(found, planned, stored)
    for parent, children in added.items():
        for child in children:
            if child in stored.tasks:  # what a completion added: planned by its handler
                body = {"id": child, "dependencies": [parent], "max_attempts": 1, "payload": {}}
                planned[child] = body
                accepted = accepted | {child}
    missing = sorted(accepted - set(stored.tasks))
    for task_id in missing:
        found.fail("accepted but missing", task_id)
    for task_id in sorted(set(planned) - accepted):
        found.fail("never accepted", task_id)
    for task_id in sorted(set(stored.tasks) - set(planned)):
        found.fail("unknown task in the database", task_id)
    for task_id, attempt in sorted(runs):
        if task_id not in stored.tasks:
            found.fail("ledger run of an unknown task", f"{task_id} attempt {attempt}")
    for key, run in sorted(runs.items()):
        if run.end is None and run.pid not in killed:
            found.fail("run never ended in a process that was not killed", f"{key} pid {run.pid}")
    if stored.orphan_edges:
        found.fail("dependency rows naming no task", str(stored.orphan_edges))
    if stored.instances:
        found.fail("instances still registered after the graceful stop", str(stored.instances))
    by_task: dict[str, dict[int, Run]] = defaultdict(dict)
    for (task_id, attempt), run in runs.items():
        by_task[task_id][attempt] = run
    for task_id, row in stored.tasks.items():
        if task_id in planned:
            check_task(found, planned[task_id], row, stored, by_task, killed, added)
    if stored.attempts is not None:
        check_history(found, planned, stored, by_task, killed)
    return found


def check_history(
    found: Audit,
    planned: dict[str, dict[str, Any]],
    stored: Stored,
    by_task: dict[str, dict[int, Run]],
    killed: set[int],
) -> None:
    """Every attempt of a finished task is in its history, once; one whose handler
    returned in a process that lived on is recorded as the handler ended it."""
    assert stored.attempts is not None
    for task_id in sorted(set(stored.attempts) - set(stored.tasks)):
        found.fail("attempt history of an unknown task", task_id)
    for task_id, row in stored.tasks.items():
        history = stored.attempts.get(task_id, {})
        if set(history) != set(range(1, row.attempts + 1)):
            found.fail("attempt history differs", f"{task_id} {sorted(history)}/{row.attempts}")
        payload = planned.get(task_id, {}).get("payload", {})
        for attempt, run in by_task.get(task_id, {}).items():
            if run.end is None or run.pid in killed or attempt not in history:
                continue
            expected = "FAILED" if fails_at(payload, attempt) else "COMPLETED"
            if history[attempt] != expected:
                found.fail("attempt recorded otherwise", f"{task_id} {attempt} {history[attempt]}")


def check_added(
    found: Audit, planned: dict[str, dict[str, Any]], stored: Stored
) -> dict[str, list[str]]:
    """The tasks an attempt added exist if and only if the task completed. Return the
    tasks each planned task adds as it completes."""
    added = {
        task_id: added_ids(task_id, body.get("payload", {}))
        for task_id, body in planned.items()
        if added_ids(task_id, body.get("payload", {}))
    }
    for parent, children in added.items():
        row = stored.tasks.get(parent)
        present = [child for child in children if child in stored.tasks]
        if row is not None and row.status == "COMPLETED" and len(present) < len(children):
            found.fail("a completed task lacks the tasks it added", f"{parent} {present}")
        if present and (row is None or row.status != "COMPLETED"):
            status = None if row is None else row.status
            found.fail("added tasks of an attempt that did not complete", f"{parent} {status}")
    return added


def check_task(
    found: Audit,
    body: dict[str, Any],
    row: Any,
    stored: Stored,
    by_task: dict[str, dict[int, Run]],
    killed: set[int],
    added: dict[str, list[str]] | None = None,
) -> None:
    """Check one task: its status, its attempts against the policy, its dependencies.

    A dependency that added tasks as it completed may have made this task wait for those
    too: all of them, or none (this task came after that completion).
    """
    task_id, attempts, payload = row.id, row.attempts, body.get("payload", {})
    mine = by_task.get(task_id, {})
    if row.status not in TERMINAL or row.status == "CANCELLED":
        found.fail("not terminal (or cancelled)", f"{task_id} {row.status}")
    extra = stored.deps.get(task_id, set()) - set(body["dependencies"])
    adopted = [set((added or {}).get(d, [])) for d in body["dependencies"]]
    if (
        not set(body["dependencies"]) <= stored.deps.get(task_id, set())
        or any((extra & kids) not in (set(), kids) for kids in adopted)
        or extra - set().union(*adopted)
    ):
        found.fail("stored dependencies differ", task_id)
    if row.max_attempts != body["max_attempts"] or attempts > row.max_attempts:
        found.fail("attempts beyond the policy", f"{task_id} {attempts}/{row.max_attempts}")
    if any(a < 1 or a > attempts for a in mine):
        found.fail("ledger attempt the database never counted", f"{task_id} {sorted(mine)}")
    for attempt in range(1, attempts):
        run = mine.get(attempt)
        lost = run is None or run.end is None or run.pid in killed
        if not lost and not fails_at(payload, attempt):
            found.fail("a successful attempt was run again", f"{task_id} attempt {attempt}")
    failed_by_design = sum(1 for a, r in mine.items() if r.end is not None and fails_at(payload, a))
    completed = row.status == "COMPLETED"
    found.lost_attempts += max(0, attempts - failed_by_design - int(completed))
    check_last_attempt(found, row, payload, mine.get(attempts), killed)
    check_dependencies(found, body, row, stored, by_task)


def check_last_attempt(
    found: Audit, row: Any, payload: dict[str, Any], run: Run | None, killed: set[int]
) -> None:
    """The last attempt explains the status: it completed, failed by design, or was killed."""
    task_id, attempts = row.id, row.attempts
    if row.status == "COMPLETED":
        if row.failures != attempts - 1:
            found.fail("COMPLETED with wrong failures", f"{task_id} {row.failures}/{attempts}")
        if run is None or run.end is None or fails_at(payload, attempts):
            found.fail("COMPLETED without a successful run", f"{task_id} attempt {attempts}")
        elif run.pid != worker_pid(row.worker):
            found.fail("COMPLETED by another process", f"{task_id} {run.pid} {row.worker}")
    elif row.status == "FAILED":
        if not row.failures == attempts == row.max_attempts:
            found.fail(
                "FAILED with attempts left",
                f"{task_id} failures {row.failures} attempts {attempts}/{row.max_attempts}",
            )
        if row.error_code == "handler_error":
            if run is None or run.end is None or not fails_at(payload, attempts):
                found.fail("handler_error without a failing run", f"{task_id} {attempts}")
        elif row.error_code == "interrupted":
            if worker_pid(row.worker) not in killed or (run is not None and run.pid not in killed):
                found.fail("interrupted, but not by a kill", f"{task_id} {row.worker}")
        else:
            found.fail("FAILED for an unexpected reason", f"{task_id} {row.error_code}")
    elif row.status == "UPSTREAM_FAILED" and (attempts or run is not None):
        found.fail("UPSTREAM_FAILED after starting", f"{task_id} attempts {attempts}")


def check_dependencies(
    found: Audit,
    body: dict[str, Any],
    row: Any,
    stored: Stored,
    by_task: dict[str, dict[int, Run]],
) -> None:
    """Nothing started before its dependencies ended; propagation went where it should."""
    task_id, names = row.id, body["dependencies"]
    everything = sorted(stored.deps.get(task_id, set()) | set(names))  # with adopted ones
    mine = by_task.get(task_id, {})
    parents = [stored.tasks[d] for d in everything if d in stored.tasks]
    all_success = body.get("trigger_rule", "all_success") == "all_success"
    unmet = [p.id for p in parents if p.status != "COMPLETED"]
    if all_success and unmet and row.status != "UPSTREAM_FAILED":
        found.fail("ran although a dependency did not complete", f"{task_id} after {unmet[:3]}")
    if row.status == "UPSTREAM_FAILED" and (not all_success or not unmet):
        found.fail("UPSTREAM_FAILED without a failed dependency", task_id)
    if not mine and not row.attempts:
        return
    first = min((r.start for r in mine.values()), default=None)
    for parent in parents:
        ends = [r.end for r in by_task.get(parent.id, {}).values() if r.end is not None]
        done = max([ns(parent.finished_at), *ends])
        if first is not None and first < done:
            found.fail("started before a dependency ended", f"{task_id} before {parent.id}")
        if row.started_at is not None and ns(row.started_at) < ns(parent.finished_at):
            found.fail("started_at before a dependency's finished_at", f"{task_id} {parent.id}")
