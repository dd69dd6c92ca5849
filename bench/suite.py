"""Run each group of figures, repeat the short ones, keep going past a failed figure."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from app.handlers import SIMULATE
from bench import db as store
from bench import e2e, floor, growth, insert, load, machine, peers, storage
from bench.client import Client
from bench.progress import log, over_budget
from bench.report import medians
from bench.server import (
    MINIMAL_SERVICE,
    Database,
    MinimalServer,
    Server,
    migrate,
    serving,
    serving_apart,
)


@dataclass
class Options:
    """Sizes and switches of one run (see `python -m bench --help`)."""

    tasks: int = 20_000
    batch: int = 1_000
    chain: int = 1_000
    fan_in: int = 1_000
    repeat: int = 3
    pg_tasks: int = 5_000
    pg_repeat: int = 3
    pg_url: str | None = None
    redis: bool = True
    load_seconds: float = 5.0
    load_processes: int = 2
    load_threads: int = 4
    sizes: list[int] = field(default_factory=lambda: [1_000, 100_000, 1_000_000])
    cycles: int = 300
    timeout_s: float = 120.0
    # Past this many seconds from the start, no further repeat of a figure starts.
    budget_s: float = 420.0
    growth: growth.Sizes = field(default_factory=lambda: growth.DEFAULT)
    only: set[str] = field(default_factory=set)
    profile: bool = False

    def wants(self, section: str) -> bool:
        """Tell whether `section` runs (all run unless --only names some)."""
        return not self.only or section in self.only


class Collector:
    """Runs figures, keeps every run and its failure, and stops a group on a time-out."""

    def __init__(self) -> None:
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.errors: dict[str, str] = {}

    def measure(self, label: str, name: str, action: Callable[[], dict[str, Any]]) -> bool:
        """Run one figure; False when the group should stop (it timed out)."""
        try:
            result = action()
        except Exception as exc:  # one failed figure must not cost the others
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{label} {name}: FAILED {self.errors[name]}")
            return not isinstance(exc, TimeoutError)
        self.runs.setdefault(name, []).append(result)
        log(f"{label} {name}: {_brief(result)}")
        return True

    def summary(self) -> dict[str, Any]:
        """Return {figure: {"runs", "median"[, "error"]}}."""
        out: dict[str, Any] = {}
        for name in {*self.runs, *self.errors}:
            runs = self.runs.get(name, [])
            out[name] = {"runs": runs, "median": medians(runs)}
            if name in self.errors:
                out[name]["error"] = self.errors[name]
        return out


def _brief(result: dict[str, Any]) -> str:
    keys = ("tasks_per_s", "per_hop_ms", "handler_lag_ms", "requests_per_s", "p99_ms")
    return ", ".join(f"{k}={result[k]:,.2f}" for k in keys if k in result) or str(result)[:120]


def ours(db: Database, opts: Options, workdir: Path) -> dict[str, Any]:
    """Run e2e, chain, fan-in and load figures on one server on `db`."""
    is_pg = db.kind == "postgresql"
    n, repeat = (opts.pg_tasks, opts.pg_repeat) if is_pg else (opts.tasks, opts.repeat)
    label = f"ours/{db.kind}"
    collect = Collector()
    migrate(db)
    with serving(db, workdir / f"server-{db.kind}.log") as server:
        client = Client(server.base)
        plan: list[tuple[str, Callable[[int], dict[str, Any]]]] = []
        t = opts.timeout_s
        many = partial(e2e.throughput, client, db, n=n, batch=opts.batch, timeout_s=t)
        if opts.wants("e2e"):
            plan.append(("e2e", lambda r: _with_cpu(server, many, prefix=f"e{r}")))
        if opts.wants("work") and not is_pg:
            plan.append(("work", lambda r: _with_cpu(server, many, prefix=f"w{r}", kind=SIMULATE)))
            plan.append(("floor", lambda r: floor.pass_floor(workdir)))
            plan.append(("bare", lambda r: floor.bare_designs(workdir)))
            plan.append(("alone", lambda r: floor.scheduler_alone(workdir)))
        if opts.wants("chain"):
            plan.append(("chain", lambda r: e2e.chain(client, db, f"c{r}", opts.chain, t)))
        if opts.wants("fanin"):
            plan.append(("fan_in", lambda r: e2e.fan_in(client, db, f"f{r}", opts.fan_in, t)))
        if opts.wants("load"):
            plan.append(("load", lambda r: _load(server.base, db, opts)))
        if opts.wants("wait"):
            plan.append(("wait", lambda r: e2e.wait_latency(client, f"a{r}")))
        if not _repeat(collect, label, plan, repeat):
            log(f"{label}: stopped after a time-out")
        client.close()
        result = collect.summary()
        result["settings"] = {"tasks": n, "repeat": repeat, **server.settings_used()}
    return result


def _with_cpu(server: Server, run: Callable[..., dict[str, Any]], **how: Any) -> dict[str, Any]:
    """Run an e2e figure and add the CPU time (user and system) the server's worker
    process spent on it, per task: the one interpreter every part of it shares."""
    try:
        pid = server.worker_pid()
    except (OSError, RuntimeError) as exc:  # the figure stands without its CPU time
        log(f"the worker's CPU time is not measured: {exc}")
        return run(**how)
    before = machine.cpu_seconds([pid])
    found = run(**how)
    used = machine.cpu_seconds([pid]) - before
    with suppress(OSError, RuntimeError):
        if server.worker_pid() == pid:  # not a worker gunicorn replaced meanwhile
            found["server_cpu_us_per_task"] = used / found["tasks"] * 1e6
    return found


def _repeat(
    collect: Collector, label: str, plan: list[tuple[str, Callable[[int], Any]]], repeat: int
) -> bool:
    # Figures interleave (e2e, chain, ... then again) so that a noisy moment hits one run.
    for r in range(repeat):
        if r and over_budget():
            log(f"{label}: over the time budget; {r} run(s) instead of {repeat}")
            return True
        for name, action in plan:
            if not collect.measure(f"{label} run {r + 1}/{repeat}", name, partial(action, r)):
                return False
    return True


def _load(base: str, db: Database, opts: Options) -> dict[str, Any]:
    result = load.post_load(base, opts.load_processes, opts.load_threads, opts.load_seconds)
    store.wait_finished(db, opts.timeout_s)  # the submitted tasks run before the next figure
    return result


# Connections of the single-submission figures: as `load` (2 processes x 4 threads), and
# eight times as many on the same two load processes.
FEW, MANY = (2, 4), (2, 32)


def apart(opts: Options, workdir: Path) -> dict[str, Any]:
    """Run the e2e figure with the API and the scheduler in two processes (SQLite)."""
    db = store.sqlite_database(workdir, "apart")
    migrate(db)
    collect = Collector()
    with serving_apart(db, workdir) as server:
        client = Client(server.base)
        n, batch, t = opts.tasks, opts.batch, opts.timeout_s
        plan = [("e2e", lambda r: e2e.throughput(client, db, f"a{r}", n, batch, t))]
        _repeat(collect, "ours/apart", plan, opts.repeat)
        client.close()
    return collect.summary()


def minimal_service(opts: Options, workdir: Path) -> dict[str, Any]:
    """Run the e2e figures, no-op tasks and tasks of 1 ms, on the least service of the
    design (bench/minimal_service.py): what one process gives it on this machine."""
    db = store.sqlite_database(workdir, "minimal-service")
    migrate(db)
    collect = Collector()
    server = MinimalServer(db, workdir / "server-minimal-service.log", app=MINIMAL_SERVICE)
    try:
        server.start()
        client = Client(server.base)
        n, batch, t = opts.tasks, opts.batch, opts.timeout_s
        run = partial(e2e.throughput, client, db, n=n, batch=batch, timeout_s=t)
        plan: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
            ("e2e", lambda r: _with_cpu(server, run, prefix=f"m{r}")),
            ("work", lambda r: _with_cpu(server, run, prefix=f"n{r}", kind=SIMULATE)),
        ]
        if not _repeat(collect, "minimal service", plan, opts.repeat):
            log("minimal service: stopped after a time-out")
        client.close()
    finally:
        server.stop()
    return collect.summary()


def single_submissions(opts: Options, workdir: Path) -> dict[str, Any]:
    """`POST /api/tasks` one task at a time: ours at 8 and at 64 connections, and the
    baseline app (bench/minimal_app.py) at 8, taking turns."""
    collect = Collector()
    ours_db = store.sqlite_database(workdir, "submit-ours")
    migrate(ours_db)
    baseline = MinimalServer(
        store.sqlite_database(workdir, "submit-minimal"), workdir / "server-minimal.log"
    )
    seconds = opts.load_seconds

    def ours_at(base: str, conns: tuple[int, int]) -> dict[str, Any]:
        result = load.post_load(base, *conns, seconds)
        store.wait_finished(ours_db, opts.timeout_s)  # its tasks run before the next figure
        return result

    with serving(ours_db, workdir / "server-submit.log") as server:
        baseline.start()
        try:
            plan: list[tuple[str, Callable[[int], Any]]] = [
                ("ours_8", lambda r: ours_at(server.base, FEW)),
                ("minimal_8", lambda r: load.post_load(baseline.base, *FEW, seconds)),
                ("ours_64", lambda r: ours_at(server.base, MANY)),
            ]
            _repeat(collect, "submit", plan, opts.repeat)
        finally:
            baseline.stop()
    return collect.summary()


def batch_inserts(opts: Options, workdir: Path) -> dict[str, Any]:
    """Batch submissions on SQLite and (with a server) PostgreSQL, server side."""
    collect = Collector()
    plan: list[tuple[str, Callable[[int], Any]]] = [
        ("sqlite", lambda r: insert.batch_insert(store.sqlite_database(workdir, f"insert{r}")))
    ]
    if opts.pg_url:
        url = opts.pg_url

        def on_postgresql(r: int) -> dict[str, Any]:
            name = f"taskbench_{os.getpid()}_insert"
            try:
                server = machine.postgres_pids()
                before = machine.cpu_seconds(server)
                run = insert.batch_insert(store.postgres_database(url, name))
                # PostgreSQL's own work: what no change on our side could take away.
                spent = machine.cpu_seconds(server) - before
                return {**run, "postgres_cpu_s": spent, "server_ceiling": run["tasks"] / spent}
            finally:
                store.drop_postgres(url, name)

        plan.append(("postgresql", on_postgresql))
    _repeat(collect, "insert", plan, opts.repeat)
    return collect.summary()


INSTANCES = (1, 2, 4)


def pg_instances(opts: Options, workdir: Path) -> dict[str, Any]:
    """E2E on one PostgreSQL database served by 1, 2 and 4 instances (one gunicorn each,
    its scheduler inside), submitting through the first; how the tasks spread over them."""
    assert opts.pg_url is not None
    collect = Collector()
    for count in INSTANCES:
        name = f"taskbench_{os.getpid()}_x{count}"
        db = store.postgres_database(opts.pg_url, name)
        try:
            migrate(db)
            with ExitStack() as stack:
                servers = [
                    stack.enter_context(serving(db, workdir / f"server-pg-x{count}-{k}.log"))
                    for k in range(count)
                ]
                client = Client(servers[0].base)
                stack.callback(client.close)

                def run(
                    r: int,
                    count: int = count,
                    db: Database = db,
                    client: Client = client,
                    servers: list[Server] = servers,
                ) -> dict[str, Any]:
                    prefix = f"x{count}r{r}"
                    ours = [s.worker_pid() for s in servers]
                    theirs = machine.postgres_pids()
                    cpu = machine.cpu_seconds(ours), machine.cpu_seconds(theirs)
                    found = e2e.throughput(
                        client, db, prefix, opts.pg_tasks, opts.batch, opts.timeout_s
                    )
                    used = machine.cpu_seconds(ours) - cpu[0], machine.cpu_seconds(theirs) - cpu[1]
                    sql = "SELECT count(*) FROM tasks WHERE id LIKE ? GROUP BY worker"
                    shares = sorted(n for (n,) in store.query(db, sql, (prefix + "-%",)))
                    return {
                        **found,
                        "instances": count,
                        "busiest_share": shares[-1] / sum(shares),
                        # Cores busy on average, from the first submission to the last finish.
                        "service_cores": used[0] / found["wall_s"],
                        "postgresql_cores": used[1] / found["wall_s"],
                    }

                _repeat(collect, f"ours/postgresql x{count}", [(f"x{count}", run)], opts.pg_repeat)
        finally:
            store.drop_postgres(opts.pg_url, name)
    return collect.summary()


def scaling(opts: Options, workdir: Path) -> list[dict[str, Any]]:
    """Run the storage-size figures; one error entry if they fail."""
    try:
        return storage.scaling(workdir, opts.sizes, opts.cycles)
    except Exception as exc:  # a failure here must not cost the peers' figures
        log(f"storage: FAILED {type(exc).__name__}: {exc}")
        return [{"stored": min(opts.sizes), "error": f"{type(exc).__name__}: {exc}"}]


def peer_figures(backend: str, opts: Options, workdir: Path) -> dict[str, Any]:
    """Run the Huey figures on `backend` ("sqlite" or "redis")."""
    collect = Collector()
    plan: list[tuple[str, Callable[[int], Any]]] = []
    # `--only peers` runs both; `--only peers,chain` only the chain.
    both = not opts.only & {"e2e", "chain", "work"}
    if both or opts.wants("e2e"):
        plan.append(("e2e", lambda r: peers.e2e(backend, workdir, opts.tasks, opts.timeout_s)))
    if (both or opts.wants("work")) and backend == "sqlite":
        work = partial(peers.e2e, backend, workdir, opts.tasks, opts.timeout_s, work=True)
        plan.append(("work", lambda r: work()))
    if both or opts.wants("chain"):
        plan.append(("chain", lambda r: peers.chain(backend, workdir, opts.chain, opts.timeout_s)))
    _repeat(collect, f"huey/{backend}", plan, opts.repeat)
    result = collect.summary()
    result["settings"] = {"consumer": " ".join(peers.CONSUMER_ARGS), "tasks": opts.tasks}
    return result
