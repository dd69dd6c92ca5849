#!/usr/bin/env python3
"""Take the README's pictures of the dashboard: a small pipeline, mid-run, in headless Chromium.

Usage: python scripts/screenshots.py [--out DIR] [--chromium PATH]
Starts gunicorn on a scratch SQLite database, submits a graph in which some tasks have
finished, some run, one failed and its dependent will never run, and saves `home.png` (the
counts and the task table), `graph.png` (one task's neighbourhood), `instances.png` (the
scheduler instances, busy with the pipeline) and `batch.png` (the pipeline's batch page,
live) under DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "app" / "static" / "dashboard" / "screenshots"
FOCUS = "join-sales"


def pipeline() -> list[dict[str, Any]]:
    """An extract-clean-join-report graph, with one validation that fails."""

    def task(task_id: str, duration_ms: int, *deps: str, **extra: Any) -> dict[str, Any]:
        body = {"id": task_id, "type": "simulate", "duration_ms": duration_ms}
        return {**body, "dependencies": list(deps), **extra}

    minute = 60_000
    return [
        task("extract-orders", 200),
        task("extract-customers", 300),
        task("extract-products", 100),
        task("clean-orders", 200, "extract-orders"),
        task("clean-customers", minute, "extract-customers"),
        task("join-sales", minute, "clean-orders", "clean-customers", "extract-products"),
        task("load-warehouse", 2000, "join-sales"),
        task("report-daily", 1000, "load-warehouse"),
        task("report-weekly", 1000, "load-warehouse"),
        task("notify-team", 100, "report-daily", "report-weekly"),
        task("validate-products", 100, "extract-products", payload={"fail": True}),
        task("publish-catalog", 100, "validate-products"),
        task("thumbnails", minute, "extract-products"),
    ]


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shoot(base: str, out: Path, chromium: str, batch_id: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 600})
            page.goto(f"{base}/tasks/{FOCUS}")
            page.wait_for_selector('#graph [data-task-id="clean-customers"][data-status="RUNNING"]')
            page.locator("section:has(#graph)").screenshot(path=out / "graph.png")
            page.goto(base + "/")
            page.wait_for_selector('[data-status="UPSTREAM_FAILED"]')
            page.screenshot(path=out / "home.png")
            page.goto(base + "/instances")
            page.wait_for_selector("#instance-rows tr[data-instance]")
            page.locator("section:has(#instance-rows)").screenshot(path=out / "instances.png")
            page.set_viewport_size({"width": 1280, "height": 1000})
            page.goto(f"{base}/batches/{batch_id}")
            page.wait_for_selector(
                '#batch-graph [data-task-id="clean-customers"][data-status="RUNNING"]'
            )
            page.wait_for_selector("#timeline rect.bar")
            page.wait_for_function("Dash.streaming()")
            page.screenshot(path=out / "batch.png", full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "FLASK_APP": "wsgi",
            "DATABASE_URL": f"sqlite:///{scratch}/screenshots.db",
            "PORT": str(port),
            "MAX_CONCURRENT_TASKS": "3",
            "API_TOKEN": "",
        }
        bin_dir = Path(sys.executable).parent
        subprocess.run([bin_dir / "flask", "db", "upgrade"], cwd=ROOT, env=env, check=True)
        log = open(Path(scratch) / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [bin_dir / "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait(lambda: call(base, "GET", "/health")["status"] == "ok", "the server")
            history = [
                {"id": f"nightly-{n:02d}", "type": "simulate", "duration_ms": 5} for n in range(40)
            ]
            call(base, "POST", "/api/tasks/batch", {"tasks": history})
            batch_id = call(base, "POST", "/api/tasks/batch", {"tasks": pipeline()})["batch_id"]
            wait(
                lambda: (
                    call(base, "GET", "/api/tasks/publish-catalog")["status"] == "UPSTREAM_FAILED"
                ),
                "the failure to propagate",
            )
            shoot(base, args.out, args.chromium, batch_id)
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
    print(f"saved home.png, graph.png, instances.png and batch.png under {args.out}")


if __name__ == "__main__":
    main()
