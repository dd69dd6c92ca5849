"""Recurring schedules in real time: a server and a second scheduler process share one
SQLite file, and a schedule firing every second fires each instant once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.support.servers import Launcher, poll

FIRINGS = 4


def test_two_processes_fire_each_instant_once_and_the_tasks_run(
    launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db)
    launcher.scheduler(db)  # a second instance, racing the server's for every instant
    body = {"id": "tick", "interval_s": 1, "task": {"type": "simulate", "duration_ms": 5}}
    created = requests.post(f"{server.base_url}/api/schedules", json=body, timeout=10)
    assert created.status_code == 201, created.text

    def fired_enough() -> dict[str, Any] | None:
        tasks = {i: t for i, t in server.all_tasks().items() if i.startswith("tick.")}
        done = [t for t in tasks.values() if t["status"] == "COMPLETED"]
        return tasks if len(done) >= FIRINGS else None

    tasks = poll(fired_enough, 60, f"{FIRINGS} firings of the schedule to complete")
    paused = requests.patch(
        f"{server.base_url}/api/schedules/tick", json={"paused": True}, timeout=10
    ).json()
    assert paused["paused"] is True and paused["next_firings"] == []
    shown = server.get("/api/schedules/tick").json()
    counts = shown["counts"]
    # Every firing recorded is a batch of stored tasks, and none was refused as a repeat.
    assert counts["failed"] == 0
    batches = {t["batch_id"] for t in server.all_tasks().values() if t["id"].startswith("tick.")}
    assert counts["fired"] == len(batches) >= len(tasks) - 1  # one may fire while we read
    assert all(task_id == task["batch_id"] for task_id, task in tasks.items())
