"""Core figures: a 200-task chain and 1,000 independent tasks of 1 ms, end to end.

Starts gunicorn on a fresh SQLite file (the defaults: FULL durability, 3 slots), submits
each graph behind a gate task so that submission time is not measured, and reads the
timing from the tasks' own timestamps: from the gate's finish to the last task's finish.

    .venv/bin/python bench/core.py [--chain 200] [--independent 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def start_server(workdir: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, **env, "PORT": str(port)}
    env["DATABASE_URL"] = f"sqlite:///{workdir}/bench.db"
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [bin_dir / "flask", "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    log = open(Path(workdir) / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [bin_dir / "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if call(base, "GET", "/health")["scheduler"]["state"] == "running":
                return server, base
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start; see " + str(Path(workdir) / "server.log"))


def run_graph(base: str, prefix: str, edges: list[list[str]]) -> dict[str, Any]:
    """Submit a gate, then tasks 0..n-1 whose dependencies are `edges`, and time them."""
    gate = f"{prefix}-gate"
    gate_ms = 2000 + 20 * len(edges)  # long enough to submit everything behind it
    call(base, "POST", "/api/tasks", {"id": gate, "type": "bench", "duration_ms": gate_ms})
    ids = [f"{prefix}-{i}" for i in range(len(edges))]
    submitted = time.monotonic()
    for task_id, deps in zip(ids, edges, strict=True):
        body = {"id": task_id, "type": "bench", "duration_ms": 1, "dependencies": deps or [gate]}
        call(base, "POST", "/api/tasks", body)
    submit_s = time.monotonic() - submitted
    last = ids[-1] if any(edges) else None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        pending = [
            i
            for i in ([last] if last else ids)
            if call(base, "GET", f"/api/tasks/{i}/status")["status"] not in ("COMPLETED", "FAILED")
        ]
        if not pending:
            break
        time.sleep(0.2)
    tasks = [call(base, "GET", f"/api/tasks/{i}") for i in [gate, *ids]]
    assert all(t["status"] == "COMPLETED" for t in tasks), "a task did not complete"
    start = parse(tasks[0]["finished_at"])
    end = max(parse(t["finished_at"]) for t in tasks[1:])
    assert submit_s * 1000 < gate_ms, "submission outlasted the gate"
    return {"tasks": len(ids), "wall_s": (end - start).total_seconds()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--independent", type=int, default=1000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server, base = start_server(workdir, {"POLLING_INTERVAL": "1000"})
        try:
            chain_edges = [[]] + [[f"chain-{i}"] for i in range(args.chain - 1)]
            chain = run_graph(base, "chain", chain_edges)
            flat = run_graph(base, "flat", [[] for _ in range(args.independent)])
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
    chain["per_hop_ms"] = chain["wall_s"] * 1000 / chain["tasks"]
    flat["tasks_per_s"] = flat["tasks"] / flat["wall_s"]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "settings": "SQLite synchronous=FULL, MAX_CONCURRENT_TASKS=3, POLLING_INTERVAL=1000",
        "chain": chain,
        "independent": flat,
    }
    print(
        f"{args.chain}-task chain of 1 ms tasks: {chain['wall_s']:.3f} s "
        f"({chain['per_hop_ms']:.2f} ms per hop; one polling interval per hop "
        f"would be {args.chain} s)"
    )
    print(
        f"{args.independent} independent 1 ms tasks, 3 slots: {flat['wall_s']:.3f} s "
        f"({flat['tasks_per_s']:.0f} tasks/s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
