"""Where the server spends its time during the e2e throughput run: py-spy, summarised.

Two runs of the figure, each sampled by py-spy in the gunicorn worker:
- "busy": every thread that is not idle, so time spent waiting on the database (a commit's
  fsync) counts; threads parked on a queue or a condition are set apart as "waiting";
- "gil": only the thread holding the GIL, i.e. where Python burns the CPU.
Each is summarised three ways: the innermost frame (self time), the innermost frame inside
`app/` (the line of ours the time is spent under), and the `app/` functions on the stack.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import db as store
from bench import e2e
from bench.client import Client
from bench.server import BIN, ROOT, migrate, serving

TOP = 12
# Leaf frames of threads that wait for work (a parked pool thread, the scheduler's sleep,
# gunicorn's poll), which py-spy does not always see as idle. A thread waiting on the
# database (a commit, psycopg's round trip) is busy and stays in.
WAITING = (
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py:81)",
    "Selector.select (selectors.py",
)


def profile_e2e(workdir: Path, n: int, batch: int, out_dir: Path) -> dict[str, Any]:
    """Run the e2e throughput figure under py-spy, busy threads then the GIL holder."""
    if not (BIN / "py-spy").exists():
        return {"error": "py-spy is not installed (pip install -r bench/requirements.txt)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    return {mode: _profiled_run(workdir, n, batch, out_dir, mode) for mode in ("busy", "gil")}


def _profiled_run(workdir: Path, n: int, batch: int, out_dir: Path, mode: str) -> dict[str, Any]:
    db = store.sqlite_database(workdir, f"profile-{mode}")
    migrate(db)
    raw = out_dir / f"profile-e2e-{mode}.txt"
    raw.unlink(missing_ok=True)
    with serving(db, workdir / "profile.log") as server:
        command = [str(BIN / "py-spy"), "record", "--pid", str(server.worker_pid())]
        command += ["--format", "raw", "--output", str(raw), "--rate", "200", "--nonblocking"]
        command += ["--gil"] if mode == "gil" else []
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)  # py-spy attaches
            run = e2e.throughput(Client(server.base), db, f"prof-{mode}", n, batch)
        finally:
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
    if not raw.exists():
        return {"error": "py-spy wrote nothing: " + err.decode()[-300:]}
    return {**summarise(raw), "run": run, "raw": str(raw)}


def summarise(raw: Path) -> dict[str, Any]:
    """Summarise py-spy's raw (collapsed) stacks."""
    leaf: Counter[str] = Counter()
    app_line: Counter[str] = Counter()
    app_function: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        total += n
        if any(marker in frames[-1] for marker in WAITING):
            waiting += n
            continue
        leaf[frames[-1]] += n
        ours = [f for f in frames if f.split("(", 1)[-1].startswith("app/")]
        if ours:
            app_line[ours[-1]] += n
        for function in {f.rsplit(":", 1)[0] + ")" for f in ours}:
            app_function[function] += n
    return {
        "samples": total,
        "waiting_pct": round(100 * waiting / max(total, 1), 1),
        "self": _top(leaf, total),
        "app_lines": _top(app_line, total),
        "app_functions": _top(app_function, total),
    }


def _top(counter: Counter[str], total: int) -> list[tuple[float, str]]:
    return [(round(100 * n / max(total, 1), 1), frame) for frame, n in counter.most_common(TOP)]


def _short(frame: str) -> str:
    """Shorten `func (/long/path/file.py:12)` to a path inside the project or package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def text(profile: dict[str, Any]) -> str:
    """Return the hot spots as text."""
    if "error" in profile:
        return "Profile: " + profile["error"]
    lines = []
    for mode, title in (("busy", "busy threads"), ("gil", "the GIL holder (CPU)")):
        summary = profile[mode]
        if "error" in summary:
            lines.append(f"Profile ({title}): {summary['error']}")
            continue
        lines.append(
            f"Profile of an e2e run ({summary['run']['tasks_per_s']:,.0f} tasks/s under py-spy), "
            f"{title}: {summary['samples']} samples, "
            f"{summary['waiting_pct']}% waiting for work (left out below)"
        )
        for heading, key in (
            ("innermost frames (self)", "self"),
            ("innermost app/ line on the stack", "app_lines"),
            ("app/ functions on the stack (inclusive)", "app_functions"),
        ):
            lines.append(f"  {heading}:")
            lines += [f"    {pct:5.1f}%  {frame}" for pct, frame in summary[key]]
    return "\n".join(lines)
