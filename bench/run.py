"""`make bench`: every performance figure of the service, beside its target and its peers.

Starts the service as docs/deployment.md deploys it (gunicorn, one worker, the scheduler in
process) on fresh databases, runs Huey as the peer on the same machine, prints a table and
writes every run to JSON. Sizes and sections are flags; --quick is a one-minute smoke run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from bench import db as store
from bench import growth, machine, peers, report
from bench.profile import profile_e2e
from bench.profile import text as profile_text
from bench.progress import BUDGET, log
from bench.server import ROOT
from bench.suite import (
    Options,
    apart,
    batch_inserts,
    minimal_service,
    ours,
    peer_figures,
    pg_instances,
    scaling,
    single_submissions,
)

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SECTIONS = (
    "e2e",
    "apart",
    "minimal",
    "work",
    "chain",
    "fanin",
    "load",
    "wait",
    "submit",
    "instances",
    "insert",
    "storage",
    "growth",
    "peers",
    "profile",
)
QUICK = {
    "tasks": 2_000,
    "chain": 200,
    "fan_in": 200,
    "repeat": 1,
    "pg_tasks": 1_000,
    "pg_repeat": 1,
    "load_seconds": 2.0,
    "sizes": [1_000, 10_000, 100_000],
    "cycles": 100,
}


def _sizes(raw: str) -> list[int]:
    return [int(float(x)) for x in raw.split(",") if x.strip()]


def _list(sizes: list[int]) -> str:
    return ",".join(f"{n:.0e}".replace("e+0", "e") for n in sizes)


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    """Read the command line into Options."""
    defaults = Options()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one run each (~1 min)")
    p.add_argument(
        "--full", action="store_true", help="growth at 1e6 stored, a 20,000 chain, 100,000 delayed"
    )
    p.add_argument("--tasks", type=int, help=f"e2e tasks (default {defaults.tasks:,})")
    p.add_argument("--batch", type=int, default=defaults.batch, help="tasks per batch request")
    p.add_argument("--chain", type=int, help=f"chain length (default {defaults.chain:,})")
    p.add_argument(
        "--fan-in", type=int, help=f"fan-in parents, <= 1000 (default {defaults.fan_in})"
    )
    p.add_argument("--repeat", type=int, help=f"runs per short figure (default {defaults.repeat})")
    p.add_argument("--pg-tasks", type=int, help=f"e2e tasks on PostgreSQL ({defaults.pg_tasks:,})")
    p.add_argument("--pg-repeat", type=int, help=f"runs on PostgreSQL ({defaults.pg_repeat})")
    p.add_argument("--pg-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG))
    p.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL figures")
    p.add_argument("--no-redis", action="store_true", help="skip Huey on Redis")
    p.add_argument("--load-seconds", type=float, help="seconds per load run (default 5)")
    p.add_argument("--load-processes", type=int, default=defaults.load_processes)
    p.add_argument("--load-threads", type=int, default=defaults.load_threads)
    p.add_argument("--sizes", type=_sizes, help="stored-task counts (default 1e3,1e5,1e6)")
    p.add_argument("--cycles", type=int, help="claim+finish cycles per size (default 300)")
    d = growth.DEFAULT
    p.add_argument("--growth-sizes", type=_sizes, help=f"growth: stored tasks ({_list(d.stored)})")
    p.add_argument("--growth-chain", type=int, help=f"growth: chain length ({d.chain:,})")
    p.add_argument("--growth-delayed", type=int, help=f"growth: delayed tasks ({d.delayed:,})")
    p.add_argument("--growth-prune", type=int, help=f"growth: tasks to prune ({d.prune:,})")
    p.add_argument("--timeout", type=float, default=defaults.timeout_s, help="per figure, s")
    p.add_argument(
        "--budget",
        type=float,
        default=defaults.budget_s,
        help=f"seconds after which no further repeat starts (default {defaults.budget_s:.0f})",
    )
    p.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    p.add_argument("--profile", action="store_true", help="also profile an e2e run (py-spy)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = p.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    names = ("tasks", "chain", "fan_in", "repeat", "pg_tasks", "pg_repeat", "load_seconds", "sizes")
    for name in names:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.cycles is not None:
        values["cycles"] = args.cycles
    opts = Options(**values)
    base = growth.QUICK if args.quick else growth.FULL if args.full else growth.DEFAULT
    opts.growth = growth.Sizes(
        args.growth_sizes or base.stored,
        args.growth_chain or base.chain,
        args.growth_delayed or base.delayed,
        args.growth_prune or base.prune,
    )
    opts.batch, opts.timeout_s, opts.budget_s = args.batch, args.timeout, args.budget
    opts.load_processes, opts.load_threads = args.load_processes, args.load_threads
    opts.redis = not args.no_redis
    opts.pg_url = None if args.no_pg else args.pg_url
    opts.only = set(args.only.split(",")) if args.only else set()
    opts.profile = args.profile or "profile" in opts.only
    if opts.only - set(SECTIONS) or not 2 <= opts.fan_in <= 1000 or opts.chain < 2:
        p.error("--only takes " + ",".join(SECTIONS) + "; --fan-in 2..1000; --chain >= 2")
    return opts, args


def _stop(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds, so every server and consumer is stopped


def main(argv: list[str] | None = None) -> None:
    """Run the suite, print the table, write the JSON."""
    opts, args = parse(argv)
    BUDGET[0] = opts.budget_s
    signal.signal(signal.SIGTERM, _stop)
    if opts.pg_url and not store.postgres_available(opts.pg_url):
        log(f"PostgreSQL at {opts.pg_url} does not answer: no PostgreSQL figures")
        opts.pg_url = None
    if opts.redis and not peers.redis_available():
        log("Redis at 127.0.0.1:6379 does not answer: no Huey-on-Redis figures")
        opts.redis = False
    results: dict[str, Any] = {"machine": machine.describe(opts.pg_url, opts.redis)}
    results["settings"] = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(opts).items()}
    print(machine.header(results["machine"]), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="taskbench-"))
    began = time.monotonic()
    failed = True
    try:
        _run_all(opts, workdir, results, args.json.parent)
        failed = bool(_failures(results))
    except Exception:  # report what was measured before the failure, then fail
        log("the run stopped on an error:\n" + traceback.format_exc())
    finally:
        results["duration_s"] = round(time.monotonic() - began, 1)
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
        if args.keep or failed:
            log(f"work folder kept (server logs, databases): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    _print(results, args.json)
    if failed:
        raise SystemExit(1)


def _run_all(opts: Options, workdir: Path, results: dict[str, Any], out_dir: Path) -> None:
    ours_sections = {"e2e", "work", "chain", "fanin", "load", "wait"}
    runs_ours = not opts.only or bool(opts.only & ours_sections)
    if runs_ours:
        results["ours"] = {"sqlite": ours(store.sqlite_database(workdir, "ours"), opts, workdir)}
    if opts.wants("apart"):
        # Beside the one-process figures, before PostgreSQL's runs leave it busy.
        log("apart: e2e with the API and `flask scheduler run` in two processes")
        results["apart"] = apart(opts, workdir)
    if opts.wants("minimal"):
        log("minimal: e2e on the least service of the design (bench/minimal_service.py)")
        results["minimal"] = minimal_service(opts, workdir)
    if runs_ours and opts.pg_url:
        name = f"taskbench_{os.getpid()}"
        try:
            pg = store.postgres_database(opts.pg_url, name)
            results["ours"]["postgresql"] = ours(pg, opts, workdir)
        finally:
            store.drop_postgres(opts.pg_url, name)
    if opts.wants("submit"):
        log("submit: single POSTs, ours and the baseline app, taking turns")
        results["submit"] = single_submissions(opts, workdir)
    if opts.wants("instances") and opts.pg_url:
        log("instances: e2e on PostgreSQL with 1, 2 and 4 instances")
        results["instances"] = pg_instances(opts, workdir)
    if opts.wants("insert"):
        log("insert: batches of 10,000 through submit_batch")
        results["insert"] = batch_inserts(opts, workdir)
    if opts.wants("storage"):
        results["storage"] = scaling(opts, workdir)
    if opts.wants("growth"):
        results["growth"] = growth.run(workdir, opts.growth, opts.pg_url)
    if opts.wants("peers"):
        results["peers"] = {"huey_sqlite": peer_figures("sqlite", opts, workdir)}
        if opts.redis:
            results["peers"]["huey_redis"] = peer_figures("redis", opts, workdir)
    if opts.profile:
        log("profile: one e2e run under py-spy")
        results["profile"] = profile_e2e(workdir, opts.tasks, opts.batch, out_dir)


def _print(results: dict[str, Any], json_path: Path) -> None:
    rows = report.rows(results)
    results["table"] = rows
    print()
    print(report.table(rows))
    print(
        "\nRatios are ours / peer: above 1 we are faster on tasks/s, below 1 faster on ms. "
        f"Settings: {_settings_line(results)}."
    )
    if "profile" in results:
        print("\n" + profile_text(results["profile"]))
    dated = report.write_json(results, json_path)
    notes = [machine.header(results["machine"]), "Settings: " + _settings_line(results) + "."]
    report.write_markdown(rows, notes, json_path.with_suffix(".md"))
    print(f"\nRun time {results['duration_s']:.0f} s; every run in {json_path} (and {dated.name})")
    failures = _failures(results)
    if failures:
        print("Failed figures:\n  " + "\n  ".join(failures), file=sys.stderr)


def _settings_line(results: dict[str, Any]) -> str:
    s = results["settings"]
    return (
        f"gunicorn 1 worker x 8 threads, MAX_CONCURRENT_TASKS=16, SQLITE_SYNCHRONOUS=FULL, "
        f"no-op handler; {s['tasks']:,} tasks in batches of {s['batch']:,} "
        f"({s['pg_tasks']:,} on PostgreSQL); medians of {s['repeat']} "
        f"(PostgreSQL {s['pg_repeat']}); Huey: consumer -k thread -w 4 (-w 16 for tasks of "
        "1 ms), SQLite fsync=True"
    )


def _failures(results: dict[str, Any]) -> list[str]:
    found = []
    for group in ("ours", "peers"):
        for backend, figures in (results.get(group) or {}).items():
            for name, figure in figures.items():
                if isinstance(figure, dict) and "error" in figure:
                    found.append(f"{group}/{backend}/{name}: {figure['error']}")
    found += [
        f"storage/{s['stored']}: {s['error']}" for s in results.get("storage", []) if "error" in s
    ]
    errors = (results.get("growth") or {}).get("errors", {})
    found += [f"growth/{name}: {error}" for name, error in errors.items()]
    return found
