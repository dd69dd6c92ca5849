"""Recurring schedules on both backends: the API, and firing with the time given.

Each firing is driven by `fire_due(engine, now=...)` (what every instance's firer calls
each second), so the tests choose the instants: many firings, several instances on one
database, downtime, a crash between storing a firing's tasks and recording it.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import pytest
from flask import Flask

from app import parts
from app.runtime.firer import Firer
from app.runtime.metrics import Metrics
from app.services import schedules
from app.statuses import Status
from app.storage import schedules as schedule_rows
from tests.support.apps import AppFactory
from tests.support.stepping import Threads, open_scheduler
from tests.support.store import count, row, set_status

T0 = datetime(2026, 12, 5, 3, 0, 0)


@pytest.fixture
def either_app(make_app: AppFactory) -> Flask:
    return make_app()


def _create(app: Flask, body: dict[str, Any], at: datetime = T0) -> dict[str, Any]:
    spec = schedules.parse_new(body)
    return schedules.create(parts.engine(app), spec, now=at).schedule


def _fire(app: Flask, at: datetime) -> schedules.Fired:
    return schedules.fire_due(parts.engine(app), now=at)


def _every_minute(sid: str = "tick", **extra: Any) -> dict[str, Any]:
    return {"id": sid, "interval_s": 60, "task": {"type": "simulate", "duration_ms": 1}, **extra}


def _ids(app: Flask) -> list[str]:
    with parts.engine(app).connect() as conn:
        return sorted(r[0] for r in conn.exec_driver_sql("SELECT id FROM tasks"))


# -- the API --------------------------------------------------------------------------


def test_a_schedule_is_created_shown_listed_and_replayed(either_app: Flask) -> None:
    client = either_app.test_client()
    body = {
        "id": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "task": {"type": "simulate", "duration_ms": 5, "payload": {"k": 1}},
        "catch_up": "last",
        "overlap": "skip",
    }
    created = client.post("/api/schedules", json=body)
    assert created.status_code == 201, created.get_json()
    assert created.headers["Location"].endswith("/api/schedules/nightly")
    shown = client.get("/api/schedules/nightly").get_json()
    assert shown["cron"] == "0 2 * * *" and shown["timezone"] == "Europe/Paris"
    assert shown["task"] == body["task"] and shown["catch_up"] == "last"
    assert shown["paused"] is False and shown["last_firing"] is None
    assert shown["counts"] == {"fired": 0, "skipped": 0, "missed": 0, "failed": 0}
    # 02:00 in Paris is 01:00 UTC in winter: five consecutive days.
    firings = [datetime.fromisoformat(f.rstrip("Z")) for f in shown["next_firings"]]
    assert len(firings) == 5
    assert all(f.hour == 1 and f.minute == 0 for f in firings)
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(firings))
    assert client.post("/api/schedules", json=body).status_code == 200  # a replay
    other = client.post("/api/schedules", json={**body, "cron": "0 3 * * *"})
    assert other.status_code == 409
    assert other.get_json()["code"] == "duplicate_id"
    assert [s["id"] for s in client.get("/api/schedules").get_json()] == ["nightly"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": 5}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 1.5}, "interval_s"),
        ({"interval_s": True}, "interval_s"),
        ({"cron": "* * * * *", "interval_s": 60}, "cron"),
        ({"catch_up": 0}, "catch_up"),
        ({"catch_up": "all"}, "catch_up"),
        ({"overlap": "queue"}, "overlap"),
        ({"paused": "yes"}, "paused"),
        ({"id": "x" * 48}, "id"),
        ({"id": "-bad"}, "id"),
        ({"task": {"type": "simulate", "duration_ms": 1, "id": "x"}}, "task.id"),
        ({"task": {"type": "simulate", "duration_ms": 0}}, "task.duration_ms"),
        ({"task": [1]}, "task"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: Any, change: dict[str, Any], field: str
) -> None:
    body = {**_every_minute(), **change}
    answer = client.post("/api/schedules", json=body)
    assert answer.status_code == 400, answer.get_json()
    error = answer.get_json()
    assert error["code"] == "validation_error"
    assert field in error["details"], error


@pytest.mark.parametrize(
    ("drop", "add", "field"),
    [
        ("interval_s", {}, "cron"),
        ("task", {}, "task"),
        (None, {"batch": {"tasks": [{"id": "a", "type": "simulate", "duration_ms": 1}]}}, "task"),
    ],
)
def test_exactly_one_of_each_pair(client: Any, drop: str | None, add: dict, field: str) -> None:
    body = {k: v for k, v in {**_every_minute(), **add}.items() if k != drop}
    answer = client.post("/api/schedules", json=body)
    assert answer.status_code == 400
    assert field in answer.get_json()["details"]


def test_a_scheduled_batch_must_leave_room_for_the_suffix(client: Any) -> None:
    body = {
        "id": "b",
        "interval_s": 60,
        "batch": {"tasks": [{"id": "a" * 112, "type": "simulate", "duration_ms": 1}]},
    }
    answer = client.post("/api/schedules", json=body)
    assert answer.status_code == 400
    assert "batch.tasks.0.id" in answer.get_json()["details"]


def test_pause_resume_edit_and_delete(either_app: Flask) -> None:
    client = either_app.test_client()
    _create(either_app, _every_minute())
    paused = client.patch("/api/schedules/tick", json={"paused": True})
    assert paused.status_code == 200 and paused.get_json()["next_firings"] == []
    assert _fire(either_app, T0 + timedelta(hours=1)).fired == []
    resumed = client.patch("/api/schedules/tick", json={"paused": False}).get_json()
    assert resumed["paused"] is False and len(resumed["next_firings"]) == 5
    edited = client.patch("/api/schedules/tick", json={"cron": "*/5 * * * *"}).get_json()
    assert edited["cron"] == "*/5 * * * *" and edited["interval_s"] is None
    assert client.patch("/api/schedules/tick", json={"id": "other"}).status_code == 400
    assert client.patch("/api/schedules/tick", json={}).status_code == 400
    assert client.patch("/api/schedules/nope", json={"paused": True}).status_code == 404
    assert client.delete("/api/schedules/tick").status_code == 204
    assert client.get("/api/schedules/tick").status_code == 404
    assert client.delete("/api/schedules/tick").status_code == 404


# -- firing ---------------------------------------------------------------------------


def test_each_instant_fires_once_with_its_id_and_batch(either_app: Flask) -> None:
    _create(either_app, _every_minute())
    assert _fire(either_app, T0 + timedelta(seconds=59)).fired == []
    for minute in range(1, 11):
        at = T0 + timedelta(minutes=minute, seconds=1)
        fired = _fire(either_app, at)
        assert [(i, n) for _, i, n in fired.fired] == [(T0 + timedelta(minutes=minute), 1)]
        assert _fire(either_app, at).fired == []  # the same instant, again: nothing
    ids = _ids(either_app)
    assert len(ids) == 10
    assert ids[0] == "tick.20261205T030100Z"
    stored = row(parts.store(either_app), "tick.20261205T030100Z")
    assert stored.batch_id == "tick.20261205T030100Z"
    shown = either_app.test_client().get("/api/schedules/tick").get_json()
    assert shown["counts"]["fired"] == 10
    assert shown["last_firing"]["at"] == "2026-12-05T03:10:00.000Z"
    assert shown["last_firing"]["outcome"] == "fired"
    assert shown["next_firings"][0] == "2026-12-05T03:11:00.000Z"


def test_instances_firing_at_once_fire_each_instant_once(make_app: AppFactory) -> None:
    apps = [make_app() for _ in range(3)]
    for k in range(5):
        _create(apps[0], _every_minute(f"s{k}", interval_s=7))
    for step in range(1, 30):
        at = T0 + timedelta(seconds=7 * step)
        barrier = threading.Barrier(len(apps))
        reports: list[schedules.Fired] = []

        def fire(
            app: Flask,
            at: datetime = at,
            barrier: threading.Barrier = barrier,
            reports: list[schedules.Fired] = reports,
        ) -> None:
            barrier.wait()
            reports.append(_fire(app, at))

        threads = [threading.Thread(target=fire, args=(a,)) for a in apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(len(r.fired) for r in reports) == 5, step
    assert count(apps[0]) == 5 * 29


def test_a_crash_between_storing_a_firing_and_recording_it_stores_nothing(
    either_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(either_app, _every_minute())

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("the process died before the commit")

    monkeypatch.setattr(schedule_rows, "advance", crash)
    with pytest.raises(RuntimeError):
        _fire(either_app, T0 + timedelta(minutes=1))
    assert count(either_app) == 0
    monkeypatch.undo()
    fired = _fire(either_app, T0 + timedelta(minutes=1, seconds=2))
    assert len(fired.fired) == 1
    assert _ids(either_app) == ["tick.20261205T030100Z"]


def test_an_edit_between_reading_and_firing_wins(either_app: Flask) -> None:
    _create(either_app, _every_minute())
    at = T0 + timedelta(minutes=1)
    with parts.engine(either_app).connect() as conn:
        (due,) = schedule_rows.due(conn, at, 10)
    schedules.edit(parts.engine(either_app), "tick", {"overlap": "skip"}, now=at)
    report = schedules.Fired()
    schedules._fire_one(parts.engine(either_app), schedules.OPEN, due, at, report)
    assert report.fired == [] and report.lost == 1
    assert count(either_app) == 0


@pytest.mark.parametrize(
    ("catch_up", "late_s", "fired", "missed"),
    [
        ("skip", 5, 1, 9),  # the latest instant is on time: it runs
        ("skip", 90, 0, 10),  # every instant is late
        ("last", 90, 1, 9),
        (3, 90, 3, 7),
        (20, 90, 10, 0),
    ],
)
def test_catch_up_after_downtime(
    either_app: Flask, catch_up: Any, late_s: int, fired: int, missed: int
) -> None:
    _create(either_app, _every_minute(interval_s=300, catch_up=catch_up))
    # Down from before the first instant (03:05) until `late_s` after the tenth (03:50).
    now = T0 + timedelta(minutes=50, seconds=late_s)
    report = _fire(either_app, now)
    assert len(report.fired) == fired
    assert sum(n for _, n in report.missed) == missed
    assert count(either_app) == fired
    if fired:  # the latest instants run, oldest first
        instants = [i for _, i, _ in report.fired]
        assert instants == [T0 + timedelta(minutes=50 - 5 * k) for k in range(fired)][::-1]
    shown = either_app.test_client().get("/api/schedules/tick").get_json()
    assert shown["counts"]["missed"] == missed and shown["counts"]["fired"] == fired
    assert shown["next_firings"][0] == "2026-12-05T03:55:00.000Z"
    assert _fire(either_app, now).fired == []  # handled once


def test_overlap_skip_waits_for_the_previous_firing(either_app: Flask) -> None:
    _create(either_app, _every_minute(overlap="skip"))
    first = _fire(either_app, T0 + timedelta(minutes=1))
    assert len(first.fired) == 1
    second = _fire(either_app, T0 + timedelta(minutes=2))
    assert second.fired == [] and len(second.skipped) == 1
    set_status(either_app, "tick.20261205T030100Z", Status.COMPLETED.value)
    third = _fire(either_app, T0 + timedelta(minutes=3))
    assert [i for _, i, _ in third.fired] == [T0 + timedelta(minutes=3)]
    shown = either_app.test_client().get("/api/schedules/tick").get_json()
    assert shown["counts"] == {"fired": 2, "skipped": 1, "missed": 0, "failed": 0}


def test_overlap_allow_fires_beside_unfinished_tasks(either_app: Flask) -> None:
    _create(either_app, _every_minute())
    for minute in (1, 2, 3):
        assert len(_fire(either_app, T0 + timedelta(minutes=minute)).fired) == 1
    assert count(either_app) == 3


def test_a_batch_fires_with_every_id_suffixed_and_its_edges_rewritten(
    either_app: Flask,
) -> None:
    client = either_app.test_client()
    assert (
        client.post("/api/tasks", json={"id": "base", "type": "simulate", "duration_ms": 1})
    ).status_code == 201
    batch = {
        "tasks": [
            {"id": "extract", "type": "simulate", "duration_ms": 1, "dependencies": ["base"]},
            {"id": "load", "type": "simulate", "duration_ms": 1, "dependencies": ["extract"]},
        ]
    }
    _create(either_app, {"id": "etl", "interval_s": 3600, "batch": batch})
    report = _fire(either_app, T0 + timedelta(hours=1))
    assert [n for _, _, n in report.fired] == [2]
    got = client.get("/api/tasks/load.20261205T040000Z").get_json()
    assert got["dependencies"] == ["extract.20261205T040000Z"]
    assert got["batch_id"] == "etl.20261205T040000Z"
    extract = client.get("/api/tasks/extract.20261205T040000Z").get_json()
    assert extract["dependencies"] == ["base"]  # a stored task keeps its id


def test_a_firing_that_cannot_be_stored_is_recorded_and_the_schedule_goes_on(
    either_app: Flask,
) -> None:
    client = either_app.test_client()
    assert client.post("/api/tasks", json={"id": "gone", "type": "simulate", "duration_ms": 1})
    task = {"type": "simulate", "duration_ms": 1, "dependencies": ["gone"]}
    _create(either_app, {"id": "orphan", "interval_s": 60, "task": task})
    with parts.engine(either_app).begin() as conn:  # as retention would, once it finished
        conn.exec_driver_sql("DELETE FROM tasks WHERE id = 'gone'")
    report = _fire(either_app, T0 + timedelta(minutes=1))
    assert report.fired == [] and [c for _, _, c in report.failed] == ["unknown_dependency"]
    shown = either_app.test_client().get("/api/schedules/orphan").get_json()
    assert shown["last_firing"]["outcome"] == "failed"
    assert "unknown_dependency" in shown["last_firing"]["error"]
    assert shown["counts"]["failed"] == 1
    assert shown["next_firings"][0] == "2026-12-05T03:02:00.000Z"
    assert _fire(either_app, T0 + timedelta(minutes=1)).failed == []  # recorded once


def test_a_deleted_schedule_fires_no_more(either_app: Flask) -> None:
    _create(either_app, _every_minute())
    schedules.delete(parts.engine(either_app), "tick")
    assert _fire(either_app, T0 + timedelta(minutes=5)).fired == []
    assert count(either_app) == 0


# -- flask schedules ... --------------------------------------------------------------


def _cli(app: Flask, *args: str, stdin: str | None = None) -> Any:
    return app.test_cli_runner().invoke(args=["schedules", *args], input=stdin)


def test_the_commands_create_list_pause_resume_fire_and_delete(app: Flask) -> None:
    body = json.dumps(_every_minute(interval_s=1))
    created = _cli(app, "create", "-", stdin=body)
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["interval_s"] == 1
    again = _cli(app, "create", "-", stdin=body)
    assert again.exit_code == 0 and "already exists with this body" in again.stderr
    listed = _cli(app, "list")
    assert listed.exit_code == 0
    header, line = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "WHEN", "PAUSED"]
    assert line.split()[:5] == ["tick", "every", "1", "s", "no"]
    paused = _cli(app, "pause", "tick")
    assert json.loads(paused.stdout)["paused"] is True
    assert json.loads(_cli(app, "resume", "tick").stdout)["next_firings"]
    fired = _poll_fire(app)
    assert fired["fired"][0]["schedule"] == "tick" and fired["fired"][0]["tasks"] == 1
    shown = json.loads(_cli(app, "show", "tick").stdout)
    assert shown["counts"]["fired"] >= 1
    assert _cli(app, "delete", "tick").exit_code == 0
    gone = _cli(app, "show", "tick")
    assert gone.exit_code == 1 and gone.stderr.startswith("error: not_found: ")
    assert _cli(app, "list").stderr.strip() == "no schedules found"


def _poll_fire(app: Flask) -> dict[str, Any]:
    """Run `fire-due` until the schedule (every second, real time) has fired."""
    deadline = time.monotonic() + 10
    while True:
        result = _cli(app, "fire-due")
        assert result.exit_code == 0, result.output
        report: dict[str, Any] = json.loads(result.stdout)
        if report["fired"] or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def test_bad_input_to_the_commands_is_one_clean_line(app: Flask) -> None:
    bad = _cli(app, "create", "-", stdin=json.dumps(_every_minute(cron="nope")))
    assert bad.exit_code == 1 and bad.stderr.startswith("error: validation_error: ")
    assert "cron" in bad.stderr and "Traceback" not in bad.output
    missing = _cli(app, "pause", "ghost")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: not_found: ")


def test_the_longest_schedule_id_fires_and_lists_its_tasks(either_app: Flask) -> None:
    sid = "s" * 47
    _create(either_app, _every_minute(sid))
    report = _fire(either_app, T0 + timedelta(minutes=1))
    assert [n for _, _, n in report.fired] == [1]
    batch_id = f"{sid}.20261205T030100Z"
    assert len(batch_id) == 64
    listed = either_app.test_client().get("/api/tasks", query_string={"batch_id": batch_id})
    assert listed.status_code == 200, listed.get_json()
    assert [t["id"] for t in listed.get_json()] == [batch_id]


def test_every_change_of_a_schedule_is_logged_and_firings_are_counted(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.schedules")
    _create(app, _every_minute(overlap="skip"))
    schedules.edit(parts.engine(app), "tick", {"paused": True}, now=T0)
    schedules.edit(parts.engine(app), "tick", {"paused": False}, now=T0)
    metrics = Metrics()
    firer = Firer(partial(schedules.fire_due, parts.engine(app)), metrics, lambda: None)
    firer.run_once(T0 + timedelta(minutes=1))
    firer.run_once(T0 + timedelta(minutes=2))  # the first firing's task is unfinished
    # 03:09 and 03:10 are within the grace (a minute): skipped, as the first is unfinished;
    # 03:03 to 03:08 are later than that: missed (catch_up: skip).
    firer.run_once(T0 + timedelta(minutes=10))
    schedules.delete(parts.engine(app), "tick")
    lines = [r.getMessage() for r in caplog.records if r.name == "app.schedules"]
    assert lines[0].startswith("schedule tick created: every 60 s, next firing ")
    assert lines[1].startswith("schedule tick paused: every 60 s, next firing none (paused)")
    assert lines[2].startswith("schedule tick resumed: ")
    assert lines[3] == "schedule tick fired at 2026-12-05T03:01:00Z: 1 task(s)"
    assert "skipped 2026-12-05T03:02:00Z" in lines[4] and "overlap: skip" in lines[4]
    assert lines[-1] == "schedule tick deleted"
    exposed = metrics.exposition().decode()
    assert 'taskscheduler_schedule_firings_total{outcome="fired"} 1.0' in exposed
    assert 'taskscheduler_schedule_firings_total{outcome="skipped"} 3.0' in exposed
    assert 'taskscheduler_schedule_firings_total{outcome="missed"} 6.0' in exposed


def test_a_firing_runs_through_the_steppable_loop(app: Flask) -> None:
    """An instance's own firer, then its passes: the fired task is claimed, run, recorded."""
    threads: list[Threads] = []

    def executor(workers: int) -> Threads:
        threads.append(Threads(workers))
        return threads[-1]

    engine = parts.engine(app)
    scheduler = open_scheduler(
        parts.store(app),
        parts.registry(app),
        cap=2,
        executor=executor,
        name=lambda: "one",
        fire=partial(schedules.fire_due, engine),
    )
    _create(app, _every_minute())
    assert scheduler.firer is not None
    at = T0 + timedelta(minutes=1)
    assert len(scheduler.firer.run_once(at).fired) == 1
    assert scheduler.run_once(at) == 1
    threads[0].finish("tick.20261205T030100Z")
    scheduler.run_once(at)
    assert row(parts.store(app), "tick.20261205T030100Z").status == Status.COMPLETED.value


def test_an_instant_a_little_late_runs_and_is_not_missed(either_app: Flask) -> None:
    """A firer a second behind sees two instants of a 1 s schedule due: both run."""
    _create(either_app, _every_minute(interval_s=1))
    assert len(_fire(either_app, T0 + timedelta(seconds=1)).fired) == 1
    report = _fire(either_app, T0 + timedelta(seconds=3))
    assert [i for _, i, _ in report.fired] == [T0 + timedelta(seconds=s) for s in (2, 3)]
    assert report.missed == []
    # Past the grace (10 s for a 1 s interval), what was due is downtime: catch_up decides.
    late = _fire(either_app, T0 + timedelta(seconds=30))
    assert [i for _, i, _ in late.fired] == [T0 + timedelta(seconds=s) for s in range(20, 31)]
    assert late.missed == [("tick", 16)]  # 4 to 19
    shown = either_app.test_client().get("/api/schedules/tick").get_json()
    assert shown["counts"]["missed"] == 16 and shown["last_firing"]["outcome"] == "fired"


def test_a_run_of_only_missed_instants_shows_the_latest_missed(either_app: Flask) -> None:
    _create(either_app, _every_minute(interval_s=300))
    with parts.engine(either_app).connect() as conn:  # pretend it fired at 03:05
        conn.exec_driver_sql("UPDATE schedules SET last_batch_id = 'tick.20261205T030500Z'")
        conn.commit()
    _fire(either_app, T0 + timedelta(minutes=32))  # 03:05 to 03:30 are late: all missed
    last = either_app.test_client().get("/api/schedules/tick").get_json()["last_firing"]
    assert last == {
        "at": "2026-12-05T03:30:00.000Z",
        "outcome": "missed",
        "batch_id": None,
        "error": None,
    }


def test_sending_the_same_timing_keeps_the_rhythm(either_app: Flask) -> None:
    _create(either_app, _every_minute(interval_s=10))  # 03:00:10, 03:00:20, ...
    later = T0 + timedelta(seconds=13)
    same = schedules.edit(parts.engine(either_app), "tick", {"interval_s": 10}, now=later)
    assert same["next_fire_at"] == T0 + timedelta(seconds=10)  # not fired yet, as before
    other = schedules.edit(parts.engine(either_app), "tick", {"interval_s": 7}, now=later)
    assert other["next_fire_at"] == later + timedelta(seconds=7)


def test_what_would_fail_every_firing_is_refused_at_creation(client: Any) -> None:
    unknown = {
        **_every_minute(),
        "task": {"type": "simulate", "duration_ms": 1, "dependencies": ["nope"]},
    }
    answer = client.post("/api/schedules", json=unknown)
    assert answer.status_code == 400 and "task.dependencies" in answer.get_json()["details"]
    nameless = {
        "id": "b",
        "interval_s": 60,
        "batch": {"tasks": [{"type": "simulate", "duration_ms": 1}]},
    }
    answer = client.post("/api/schedules", json=nameless)
    assert answer.status_code == 400 and "batch.tasks.0.id" in answer.get_json()["details"]
    alias = {
        "id": "b",
        "interval_s": 60,
        "batch": {
            "tasks": [
                {"id": "a", "type": "simulate", "duration_ms": 1},
                {
                    "id": "c",
                    "type": "simulate",
                    "duration_ms": 1,
                    "dependencies": ["a.20000101T000000Z"],
                },
            ]
        },
    }
    answer = client.post("/api/schedules", json=alias)
    assert answer.status_code == 400
    assert "batch.tasks.1.dependencies" in answer.get_json()["details"]
    # Refusals name the tasks as the schedule does, not as a sample firing would.
    looped = {"id": "looped", "interval_s": 60, "batch": {"tasks": [
        {"id": "a", "type": "simulate", "duration_ms": 1, "dependencies": ["b"]},
        {"id": "b", "type": "simulate", "duration_ms": 1, "dependencies": ["a"]},
    ]}}  # fmt: skip
    answer = client.post("/api/schedules", json=looped)
    assert answer.get_json()["details"] == {
        "batch": "The dependencies form a cycle of 2 tasks: a -> b -> a."
    }
    ghost = {"id": "ghostly", "interval_s": 60, "task": {
        "type": "simulate", "duration_ms": 1, "dependencies": ["ghost"]}}  # fmt: skip
    answer = client.post("/api/schedules", json=ghost)
    assert answer.get_json()["error"] == "1 dependency names no stored task: ghost."
    for zone in ("localtime", "posixrules", "Factory"):
        answer = client.post("/api/schedules", json={**_every_minute(), "timezone": zone})
        assert answer.status_code == 400 and "timezone" in answer.get_json()["details"]


def test_a_paused_schedule_created_again_unpaused_is_a_replay(client: Any) -> None:
    assert client.post("/api/schedules", json=_every_minute()).status_code == 201
    assert client.patch("/api/schedules/tick", json={"paused": True}).status_code == 200
    again = client.post("/api/schedules", json=_every_minute())
    assert again.status_code == 200 and again.get_json()["paused"] is True


def test_browsers_may_patch_and_delete_from_another_origin(client: Any) -> None:
    answer = client.options(
        "/api/schedules/tick",
        headers={"Origin": "http://elsewhere", "Access-Control-Request-Method": "PATCH"},
    )
    methods = answer.headers["Access-Control-Allow-Methods"]
    assert "PATCH" in methods and "DELETE" in methods
