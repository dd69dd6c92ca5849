#!/usr/bin/env python3
"""Crash loop: SIGKILL the service at random moments while it takes and runs a DAG, then audit.

Usage: python scripts/crash_loop.py [--tasks 5000] [--kills 10] [--seed 1]
           [--database-url postgresql://...] [--workdir DIR] [--keep]

Runs `gunicorn -c gunicorn.conf.py wsgi:app` with the `ledger` handler
(tests/support/ledger_handlers.py) on a SQLite file, or on a fresh schema of the PostgreSQL
database at --database-url. A client thread submits a seeded random DAG through the HTTP API, in
batches and single POSTs, while the tasks run; the main thread SIGKILLs the whole gunicorn
process group at random moments (some of them while it is still starting and recovering) and
starts it again. A submission left without an answer is replayed after the restart with the same
id and body: an identical replay answers 200, so it is accepted exactly once whether or not the
killed server committed it. Every answer is logged in `client.jsonl`. After the last restart the
script waits until every task is terminal, stops the service with SIGTERM (it must exit 0) and
checks:

- every accepted id is stored and terminal, every planned id was accepted, nothing else is
  stored, and each task's stored dependencies are the ones submitted;
- every ledger run belongs to a known task; no (task, attempt) started twice; a run that
  never ended ran in a process that was killed;
- attempts follow the retry policy, a kill counting as an attempt (see `audit` and
  docs/semantics.md#attempts-and-the-retry-budget): never more than max_attempts; COMPLETED after
  attempts - 1 failures, FAILED with none left, each failure explained by the handler failing by
  design or by a kill;
- no task started before its dependencies ended (ledger times and stored timestamps), and
  failure propagation reached exactly the tasks it should;
- the API lists the same statuses as the database; no scheduler instance is left
  registered; on SQLite `PRAGMA integrity_check` is ok and `PRAGMA foreign_key_check` empty.

It prints a summary and exits 0 when nothing was violated, 1 otherwise (the work directory,
with every server's log, the ledger and the client log, is then kept). It needs the
development environment: it reuses tests/support/servers.py to run the processes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from sqlalchemy import create_engine, select, text

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.storage.tables import deps, instances, task_attempts, tasks  # noqa: E402
from scripts.crash_audit import Audit, Run, Stored, audit, read_ledger  # noqa: E402
from tests.support.servers import Launcher, Server, free_port, group_pids, run_flask  # noqa: E402

GRACE_S = 5
EXIT_MARGIN_S = 15
EARLY_KILL_SHARE = 0.2  # kills that strike while gunicorn starts and recovers
NO_ANSWER = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
SHOWN = 10  # examples printed per kind of violation


@dataclass
class Options:
    """What to run: the command-line options, with the defaults of the long form."""

    tasks: int = 5000
    kills: int = 10
    seed: int = 1
    database_url: str = ""
    workdir: Path | None = None
    keep: bool = False
    slots: int = 8
    max_uptime_s: float = 2.0


# -- the plan: a DAG of workflows, cut into submissions --------------------------------------


def make_tasks(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Return `count` ledger tasks: workflows of 1-60, each depending on earlier ones of its own.

    A task that fails for good (by design, or interrupted without retries left) takes its
    workflow's dependents with it, not the whole graph. Mixed: no retries or 1-3 retries,
    2 % failing every attempt, 8 % failing their first one or two, 5 % `all_done`, 5 %
    adding 1-4 tasks that depend on them as they complete (dynamic fan-out).
    """
    bodies: list[dict[str, Any]] = []
    group: list[str] = []
    group_left = 0
    for i in range(count):
        if group_left == 0:
            group, group_left = [], rng.randint(1, 60)
        group_left -= 1
        task_id = f"c{i:05d}"
        duration = rng.randint(100, 400) if rng.random() < 0.15 else rng.randint(1, 30)
        body: dict[str, Any] = {"id": task_id, "type": "ledger", "duration_ms": duration}
        body["dependencies"] = []
        if group and rng.random() < 0.7:
            body["dependencies"] = rng.sample(group, min(len(group), rng.randint(1, 3)))
            if rng.random() < 0.05:
                body["trigger_rule"] = "all_done"
        body["max_attempts"] = 1 if rng.random() < 0.4 else rng.randint(2, 4)
        body["retry_backoff_ms"] = rng.randint(0, 50)
        roll = rng.random()
        if roll < 0.02:
            body["payload"] = {"fail": True}
        elif roll < 0.10:
            body["payload"] = {"fail_attempts": rng.randint(1, 2)}
        elif roll < 0.15:
            body["payload"] = {"map": rng.randint(1, 4)}  # adds tasks as it completes
        bodies.append(body)
        group.append(task_id)
    return bodies


@dataclass
class Chunk:
    """One submission: a single POST or a batch, and what became of it."""

    start: int  # index of its first task in the plan
    kind: str  # "single" or "batch"
    bodies: list[dict[str, Any]]
    tries: int = 0
    answer: int | None = None

    @property
    def ids(self) -> list[str]:
        return [body["id"] for body in self.bodies]


def make_chunks(rng: random.Random, bodies: list[dict[str, Any]]) -> list[Chunk]:
    """Cut the plan, in order, into runs of 1-15 single POSTs and batches of 2-250.

    Batches hold at most a twentieth of the plan, so that a short plan is cut finely too.
    """
    chunks: list[Chunk] = []
    largest = max(2, min(250, len(bodies) // 20))
    i = 0
    while i < len(bodies):
        if rng.random() < 0.5:
            for j in range(i, min(len(bodies), i + rng.randint(1, 15))):
                chunks.append(Chunk(j, "single", [bodies[j]]))
        else:
            size = rng.randint(2, largest)
            chunks.append(Chunk(i, "batch", bodies[i : i + size]))
        i = chunks[-1].start + len(chunks[-1].bodies)
    return chunks


# -- the service's lives ----------------------------------------------------------------------


@dataclass
class Life:
    """One gunicorn process group, from start to SIGKILL (or to the final SIGTERM)."""

    server: Server
    early: bool
    killed_pids: set[int] = field(default_factory=set)


class Lives:
    """What the killer and the client share: how many kills, which server is up."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.kills = 0
        self.generation = 0  # how many servers have become ready

    def wait(self, predicate: Any, timeout: float | None = None) -> bool:
        """Block until `predicate()` holds (under the lock), or `timeout` passes."""
        with self.cond:
            return bool(self.cond.wait_for(predicate, timeout))

    def bump(self, kills: int = 0, generation: int = 0) -> None:
        """Count a kill or a server that became ready, and wake the waiting client."""
        with self.cond:
            self.kills += kills
            self.generation += generation
            self.cond.notify_all()


class Client(threading.Thread):
    """Submits every chunk in order, replaying those left without an answer."""

    def __init__(
        self,
        url: str,
        chunks: list[Chunk],
        total: int,
        kills: int,
        lives: Lives,
        log: Path,
        pace_s: float,
    ) -> None:
        super().__init__(name="client", daemon=True)
        self.url, self.chunks, self.total, self.kills = url, chunks, total, kills
        self.lives = lives
        self.log_path = log
        self.pace_s = pace_s  # seconds per task, so that a life's share spans its uptime
        self.rng = random.Random(total)
        self.violations: list[str] = []
        self.no_answer = 0
        self.replay_answers: Counter[int] = Counter()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with self.log_path.open("a") as log:
                for chunk in self.chunks:
                    # Pace: the share of the plan sent so far follows the share of kills
                    # done, so every life gets new work and the last kills strike while
                    # tasks run; within a life, the chunks are spread over its uptime.
                    due = self.kills * chunk.start // self.total
                    self.lives.wait(lambda due=due: self.lives.kills >= due)
                    self._submit(chunk, log)
                    if self.lives.kills < self.kills:
                        time.sleep(self.pace_s * len(chunk.bodies) * self.rng.uniform(0.5, 1.5))
        except Exception as exc:  # an answer it could not read: a violation, not a hang
            self.violations.append(f"the client stopped: {type(exc).__name__}: {exc}")
        finally:
            self.done.set()

    def _submit(self, chunk: Chunk, log: Any) -> None:
        path, body = ("/api/tasks", chunk.bodies[0])
        if chunk.kind == "batch":
            path, body = "/api/tasks/batch", {"tasks": chunk.bodies}
        while True:
            chunk.tries += 1
            generation = self.lives.generation
            try:
                resp = requests.post(self.url + path, json=body, timeout=60)
            except NO_ANSWER as exc:
                self.no_answer += 1
                entry = {"try": chunk.tries, "kind": chunk.kind, "ids": chunk.ids}
                entry["error"] = type(exc).__name__
                self._log(log, entry)
                # Replay once a restarted server serves (or a while later, if none was killed).
                self.lives.wait(lambda g=generation: self.lives.generation > g, 5.0)
                continue
            chunk.answer = resp.status_code
            entry = {"try": chunk.tries, "kind": chunk.kind, "ids": chunk.ids}
            self._log(log, {**entry, "status": resp.status_code})
            self._check(chunk, resp)
            return

    def _check(self, chunk: Chunk, resp: requests.Response) -> None:
        if chunk.tries > 1:
            self.replay_answers[resp.status_code] += 1
        if resp.status_code not in (200, 201):
            self.violations.append(f"{chunk.ids[0]}: answered {resp.status_code} {resp.text[:200]}")
            return
        if resp.status_code == 200 and chunk.tries == 1:
            self.violations.append(f"{chunk.ids[0]}: a first submission answered 200")
        got = resp.json()
        answered = [t["id"] for t in got["tasks"]] if chunk.kind == "batch" else [got["id"]]
        if answered != chunk.ids:
            self.violations.append(f"{chunk.ids[0]}: the answer names other tasks: {answered[:3]}")

    def _log(self, log: Any, entry: dict[str, Any]) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        log.write(json.dumps({"at": stamp, **entry}) + "\n")
        log.flush()

    def accepted(self) -> set[str]:
        """Return every id a 2xx answer accepted."""
        return {i for c in self.chunks if c.answer in (200, 201) for i in c.ids}


# -- the database -----------------------------------------------------------------------------


def prepare_database(options: Options, workdir: Path) -> tuple[str, str | None]:
    """Create and migrate the database; return its URL and the PostgreSQL schema, if any."""
    schema = None
    if options.database_url:
        schema = f"crash_{uuid.uuid4().hex[:10]}"
        base = _psycopg(options.database_url)
        admin = create_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    else:
        url = f"sqlite:///{workdir / 'tasks.db'}"
    done = run_flask(url, "db", "upgrade")
    if done.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed: {done.stdout}{done.stderr}")
    return url, schema


def drop_schema(options: Options, schema: str) -> None:
    """Drop the PostgreSQL schema the run created."""
    admin = create_engine(_psycopg(options.database_url))
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def unfinished(url: str) -> int:
    """Count the tasks still QUEUED or RUNNING."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            sql = "SELECT count(*) FROM tasks WHERE status IN ('QUEUED', 'RUNNING')"
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def read_stored(url: str) -> Stored:
    """Read every task, edge and instance."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(select(tasks))}
            edges: dict[str, set[str]] = defaultdict(set)
            for task_id, dep in conn.execute(select(deps.c.task_id, deps.c.dependency_id)):
                edges[task_id].add(dep)
            count = conn.execute(select(instances.c.id)).all()
            history: dict[str, dict[int, str]] = defaultdict(dict)
            query = select(
                task_attempts.c.task_id, task_attempts.c.attempt, task_attempts.c.outcome
            )
            for task_id, attempt, outcome in conn.execute(query):
                history[task_id][attempt] = outcome
            orphans = conn.execute(
                text(
                    "SELECT count(*) FROM task_dependencies d WHERE NOT EXISTS"
                    " (SELECT 1 FROM tasks t WHERE t.id = d.task_id) OR NOT EXISTS"
                    " (SELECT 1 FROM tasks t WHERE t.id = d.dependency_id)"
                )
            ).scalar_one()
        return Stored(rows, edges, len(count), int(orphans), dict(history))
    finally:
        engine.dispose()


def sqlite_checks(path: Path) -> list[str]:
    """Run SQLite's own integrity and foreign-key checks on the file."""
    with closing(sqlite3.connect(path)) as conn:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
    found = [] if integrity == ["ok"] else [f"PRAGMA integrity_check: {integrity[:5]}"]
    if foreign:
        found.append(f"PRAGMA foreign_key_check: {len(foreign)} rows, e.g. {foreign[:5]}")
    return found


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Report:
    """What a run did and found."""

    options: Options
    workdir: Path
    lines: list[str] = field(default_factory=list)
    violations: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self) -> str:
        """Return the summary, then each kind of violation with a few examples."""
        out = list(self.lines)
        for kind, examples in sorted(self.violations.items()):
            out.append(f"VIOLATION {kind}: {len(examples)}, e.g. {examples[:SHOWN]}")
        out.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(out)


class Loop:
    """One crash loop: the service's lives, the client, and the database they share."""

    def __init__(self, options: Options, workdir: Path, url: str) -> None:
        self.options, self.workdir, self.url = options, workdir, url
        self.rng = random.Random(options.seed)
        self.plan = make_tasks(self.rng, options.tasks)
        self.chunks = make_chunks(self.rng, self.plan)
        self.timing = random.Random(options.seed + 1)  # when to kill: apart from the plan
        self.ledger = workdir / "ledger.txt"
        self.launcher = Launcher(workdir)
        self.port = free_port()
        self.lives = Lives()
        self.history: list[Life] = []
        url_base = f"http://127.0.0.1:{self.port}"
        self.client = Client(
            url_base,
            self.chunks,
            len(self.plan),
            options.kills,
            self.lives,
            workdir / "client.jsonl",
            # A life's share of the plan is sent over its mean uptime.
            options.max_uptime_s / 2 * options.kills / options.tasks,
        )
        self.violations: dict[str, list[str]] = defaultdict(list)
        self.api_statuses: dict[str, str] | None = None

    def settings(self) -> dict[str, str]:
        return {
            "TASK_HANDLERS": "tests.support.ledger_handlers",
            "LEDGER_PATH": str(self.ledger),
            "MAX_CONCURRENT_TASKS": str(self.options.slots),
            "SHUTDOWN_GRACE_S": str(GRACE_S),
        }

    def start(self, early: bool) -> Server:
        """Start gunicorn; unless `early`, wait until it serves with its scheduler running."""
        ready = None if early else "running"
        server = self.launcher.gunicorn(self.url, ready=ready, port=self.port, **self.settings())
        self.history.append(Life(server, early))
        if not early:
            self.lives.bump(generation=1)
        return server

    def crash(self) -> None:
        """Start, SIGKILL at a random moment, `kills` times; the client runs meanwhile."""
        for n in range(self.options.kills):
            early = n > 0 and self.timing.random() < EARLY_KILL_SHARE
            server = self.start(early)
            if n == 0:
                self.client.start()
            if early:  # while it imports, recovers what the last life left, or binds
                uptime = self.timing.uniform(0.1, 1.5)
            else:
                uptime = self.timing.uniform(0.05, self.options.max_uptime_s)
            time.sleep(uptime)  # a random moment, on purpose: this is not a wait for a state
            self.history[-1].killed_pids = group_pids(server.pgid)
            server.signal_group(signal.SIGKILL)
            server.kill()
            self.lives.bump(kills=1)

    def settle(self, final: Server) -> None:
        """Let the client finish, wait until every task is terminal, stop gracefully."""
        budget = 120 + len(self.plan) / 20
        if not self.client.done.wait(budget):
            self.violations["client never finished"].append(f"after {budget:.0f} s")
            return
        deadline = time.monotonic() + budget
        while (left := unfinished(self.url)) and time.monotonic() < deadline:
            final.assert_alive()
            time.sleep(0.2)
        if left:
            self.violations["tasks left unfinished"].append(f"{left} after {budget:.0f} s")
        shown = final.all_tasks()
        self.api_statuses = {task_id: task["status"] for task_id, task in shown.items()}
        final.signal(signal.SIGTERM)
        code = final.wait_exit(GRACE_S + EXIT_MARGIN_S)
        if code != 0:
            self.violations["final SIGTERM did not exit 0"].append(str(code))

    def check(self) -> tuple[Stored, Audit, dict[tuple[str, int], Run]]:
        """Read the database and the ledger and audit them."""
        stored = read_stored(self.url)
        runs, problems = read_ledger(self.ledger)
        for problem in problems:
            self.violations["ledger: an attempt started twice, or ended unstarted"].append(problem)
        killed = {pid for life in self.history for pid in life.killed_pids}
        found = audit(self.plan, self.client.accepted(), stored, runs, killed)
        for kind, examples in found.violations.items():
            self.violations[kind].extend(examples)
        for message in self.client.violations:
            self.violations["unexpected answer"].append(message)
        shown = self.api_statuses or {}
        differ = [
            t for t, s in shown.items() if t not in stored.tasks or stored.tasks[t].status != s
        ]
        if differ or len(shown) != len(stored.tasks):
            self.violations["the API and the database disagree"].append(str(differ[:SHOWN]))
        if not self.options.database_url:
            for problem in sqlite_checks(self.workdir / "tasks.db"):
                self.violations["SQLite integrity"].append(problem)
        return stored, found, runs

    def summary(self, stored: Stored, found: Audit, runs: Any, elapsed: float) -> list[str]:
        """Return the summary lines."""
        backend = "postgresql" if self.options.database_url else "sqlite"
        statuses = Counter(row.status for row in stored.tasks.values())
        codes = Counter(r.error_code for r in stored.tasks.values() if r.status == "FAILED")
        attempts = sum(row.attempts for row in stored.tasks.values())
        retries = sum(max(0, row.attempts - 1) for row in stored.tasks.values())
        kinds = Counter(chunk.kind for chunk in self.chunks)
        early = sum(1 for life in self.history if life.early)
        replays = ", ".join(
            f"{n} answered {c}" for c, n in sorted(self.client.replay_answers.items())
        )
        return [
            f"crash loop: {len(self.plan)} tasks, seed {self.options.seed}, {backend},"
            f" {self.options.slots} slots",
            f"submissions: {kinds['single']} single POSTs, {kinds['batch']} batches;"
            f" accepted ids: {len(self.client.accepted())}",
            f"kills: {self.lives.kills} SIGKILL ({early} during start-up);"
            f" restarts: {len(self.history) - 1}",
            f"no answer (replayed after restart): {self.client.no_answer}; replays: {replays or 0}",
            "outcomes: "
            + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))
            + " (FAILED: "
            + ", ".join(f"{c} {n}" for c, n in sorted(codes.items()))
            + ")",
            f"attempts: {attempts} started, {len(runs)} in the ledger; retries {retries};"
            f" attempts lost to kills {found.lost_attempts}",
            f"added by completions: {len(set(stored.tasks) - {b['id'] for b in self.plan})} tasks",
            f"elapsed: {elapsed:.1f} s",
        ]


def run(options: Options) -> Report:
    """Run one crash loop and audit it; never raise for a violation, report it."""
    began = time.monotonic()
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="crash-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url, schema = prepare_database(options, workdir)
    loop = Loop(options, workdir, url)
    report = Report(options, workdir)
    try:
        loop.crash()
        final = loop.start(early=False)
        loop.settle(final)
        stored, found, runs = loop.check()
        report.lines = loop.summary(stored, found, runs, time.monotonic() - began)
    except (AssertionError, requests.RequestException) as exc:
        # A server that never came back, or stopped answering: a failure, with its logs.
        loop.violations["the run broke off"].append(f"{type(exc).__name__}: {exc}")
    finally:
        for life in loop.history:
            life.server.kill()
        report.violations = dict(loop.violations)
        if not report.ok or options.keep:
            report.lines.append(f"work directory kept: {workdir}")
        else:
            if schema is not None:
                drop_schema(options, schema)
            if options.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    return report


def parse(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks in the DAG (5000)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the service (10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the plan and the kills (1)")
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL database to make a fresh schema in"
    )
    parser.add_argument("--workdir", type=Path, help="where the logs, ledger and database go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (and schema)")
    parser.add_argument("--slots", type=int, default=8, help="MAX_CONCURRENT_TASKS (8)")
    parser.add_argument(
        "--max-uptime", type=float, default=2.0, help="most seconds between ready and kill (2)"
    )
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.kills < 1:
        parser.error("--tasks and --kills must be at least 1")
    return Options(
        tasks=args.tasks,
        kills=args.kills,
        seed=args.seed,
        database_url=args.database_url,
        workdir=args.workdir,
        keep=args.keep,
        slots=args.slots,
        max_uptime_s=args.max_uptime,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the loop from the command line; 0 when nothing was violated."""
    report = run(parse(argv))
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
