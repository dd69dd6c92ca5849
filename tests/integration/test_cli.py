"""`flask tasks ...` through Flask's CLI runner: output, exit codes and clean errors."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import update

from app import events
from app.cli.tasks import Duration
from app.cli.wait import poll_until_finished
from app.storage import database
from app.storage.tables import tasks
from tests.support.client import ORIGINAL_FIELDS


def invoke(app: Flask, *args: str, stdin: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=["tasks", *args], input=stdin)


def succeed(app: Flask, *args: str, stdin: str | None = None) -> Result:
    result = invoke(app, *args, stdin=stdin)
    assert result.exit_code == 0, result.output
    return result


def assert_cli_error(result: Result, code: str) -> str:
    """Check one clean `error: <code>: <message>` on stderr, exit 1, and return stderr."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {code}: "), result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    return result.stderr


def write(tmp_path: Path, body: Any, name: str = "task.json") -> str:
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


def submit(app: Flask, task_id: str, *deps: str) -> dict[str, Any]:
    body = {"id": task_id, "type": "t", "duration_ms": 1, "dependencies": list(deps)}
    return json.loads(succeed(app, "submit", "-", stdin=json.dumps(body)).stdout)


def set_finished(app: Flask, task_id: str, status: str, ago: timedelta) -> None:
    stmt = (
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(status=status, finished_at=database.utcnow() - ago)
    )
    with database.write(app.extensions["store"].engine) as conn:
        conn.execute(stmt)


# -- submit ---------------------------------------------------------------------------


def test_submit_a_task_from_a_file_prints_it_as_the_api_shows_it(
    app: Flask, tmp_path: Path
) -> None:
    path = write(tmp_path, {"id": "a", "type": "etl", "duration_ms": 5, "payload": {"n": 1}})

    shown = json.loads(succeed(app, "submit", path).stdout)

    assert list(shown)[:7] == ORIGINAL_FIELDS
    assert shown["status"] == "QUEUED"
    assert shown["payload"] == {"n": 1}
    assert app.test_client().get("/api/tasks/a").get_json() == shown


def test_submit_reads_stdin_and_says_when_it_was_a_replay(app: Flask) -> None:
    body = json.dumps({"id": "a", "type": "etl", "duration_ms": 5})
    first = succeed(app, "submit", "-", stdin=body)
    again = succeed(app, "submit", "-", stdin=body)

    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert first.stderr == ""
    assert "already existed" in again.stderr


@pytest.mark.usefixtures("task_events_on")
def test_submit_logs_no_state_change_yet_the_app_still_does(app: Flask) -> None:
    log = events.of(app.extensions["store"].engine)
    log.stream = out = io.StringIO()

    shown = submit(app, "quiet")
    log.flush()

    assert shown["status"] == "QUEUED"
    assert out.getvalue() == ""
    app.test_client().post("/api/tasks", json={"id": "loud", "type": "t", "duration_ms": 1})
    log.flush()
    assert "task loud QUEUED" in out.getvalue()


def test_submit_starts_no_scheduler(app: Flask) -> None:
    submit(app, "a")
    succeed(app, "list")

    assert app.extensions["scheduler"].id is None
    assert app.extensions["store"].instances() == []
    assert app.test_client().get("/api/tasks/a/status").get_json()["status"] == "QUEUED"


def test_submit_a_graph_as_one_batch(app: Flask, tmp_path: Path) -> None:
    graph = {
        "tasks": [
            {"id": "extract", "type": "etl", "duration_ms": 1},
            {"id": "load", "type": "etl", "duration_ms": 1, "dependencies": ["extract"]},
        ]
    }

    shown = json.loads(succeed(app, "submit", write(tmp_path, graph)).stdout)

    assert [t["id"] for t in shown["tasks"]] == ["extract", "load"]
    assert {t["batch_id"] for t in shown["tasks"]} == {shown["batch_id"]}
    listed = succeed(app, "list", "--batch-id", shown["batch_id"]).stdout
    assert "extract" in listed and "load" in listed


def test_a_cycle_in_a_graph_is_refused(app: Flask, tmp_path: Path) -> None:
    graph = {
        "tasks": [
            {"id": "a", "type": "t", "duration_ms": 1, "dependencies": ["b"]},
            {"id": "b", "type": "t", "duration_ms": 1, "dependencies": ["a"]},
        ]
    }

    stderr = assert_cli_error(invoke(app, "submit", write(tmp_path, graph)), "dependency_cycle")

    assert "cycle:" in stderr
    assert succeed(app, "list").stderr == "no tasks found\n"


def test_a_file_that_cannot_be_read_is_a_clean_error(app: Flask, tmp_path: Path) -> None:
    stderr = assert_cli_error(invoke(app, "submit", str(tmp_path / "nope.json")), "invalid_file")

    assert "nope.json" in stderr


@pytest.mark.parametrize(
    "text",
    ['{"id": "a",', "", "[1, 2]", '{"duration_ms": NaN}', '{"a": 1, "a": 2}', "\xff"],
    ids=["truncated", "empty", "array", "nan", "duplicate-key", "not-utf8"],
)
def test_invalid_json_is_a_clean_error(app: Flask, tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1"))

    assert_cli_error(invoke(app, "submit", str(path)), "invalid_json")


def test_a_validation_error_names_each_bad_field(app: Flask) -> None:
    body = json.dumps({"type": "t", "duration_ms": "5", "status": "COMPLETED"})

    stderr = assert_cli_error(invoke(app, "submit", "-", stdin=body), "validation_error")

    assert "  duration_ms: Must be a JSON integer" in stderr
    assert "  status: Set by the server; a submission cannot give it." in stderr


def test_an_unknown_dependency_is_refused(app: Flask) -> None:
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 1, "dependencies": ["ghost"]})

    stderr = assert_cli_error(invoke(app, "submit", "-", stdin=body), "unknown_dependency")

    assert "ghost" in stderr


def test_a_changed_resubmission_is_a_duplicate(app: Flask) -> None:
    submit(app, "a")
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 2})

    assert_cli_error(invoke(app, "submit", "-", stdin=body), "duplicate_id")


# -- submit --wait ----------------------------------------------------------------------


def test_wait_exits_0_once_every_task_completed(app: Flask) -> None:
    app.extensions["scheduler"].start()
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 1})

    result = succeed(app, "submit", "--wait", "--timeout", "60", "-", stdin=body)

    printed = json.loads(result.stdout)  # the task as the wait ended on it
    assert (printed["id"], printed["status"], printed["attempts"]) == ("a", "COMPLETED", 1)
    assert printed == app.test_client().get("/api/tasks/a").get_json()
    assert "1 task finished" in result.stderr and "1 COMPLETED" in result.stderr


def test_wait_prints_a_graph_as_it_ended(app: Flask) -> None:
    app.extensions["scheduler"].start()
    body = json.dumps(
        {
            "tasks": [
                {"id": "g1", "type": "t", "duration_ms": 1},
                {"id": "g2", "type": "t", "duration_ms": 1, "dependencies": ["g1"]},
            ]
        }
    )

    result = succeed(app, "submit", "--wait", "--timeout", "60", "-", stdin=body)

    printed = json.loads(result.stdout)
    assert [t["id"] for t in printed["tasks"]] == ["g1", "g2"]
    assert {t["status"] for t in printed["tasks"]} == {"COMPLETED"}
    assert printed["tasks"][1]["dependencies"] == ["g1"]
    batch = app.test_client().get("/api/tasks/g1").get_json()["batch_id"]
    assert printed["batch_id"] == batch


def test_wait_exits_1_when_a_task_did_not_complete(app: Flask) -> None:
    submit(app, "root")
    succeed(app, "cancel", "root")
    body = json.dumps({"id": "child", "type": "t", "duration_ms": 1, "dependencies": ["root"]})

    result = invoke(app, "submit", "--wait", "-", stdin=body)

    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["status"] == "CANCELLED"
    assert "1 CANCELLED" in result.stderr
    assert "CANCELLED child: Dependency root was cancelled" in result.stderr
    # Ended as it was submitted (its dependency cancelled): no scheduler was waited for.
    assert "scheduler" not in result.stderr


def test_wait_gives_up_at_the_timeout(app: Flask) -> None:
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 1})

    result = invoke(app, "submit", "--wait", "--timeout", "0", "-", stdin=body)

    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["status"] == "QUEUED"
    lines = result.stderr.splitlines()
    # No scheduler runs on this database: said before the wait and again at its end.
    assert lines[0] == NO_SCHEDULER
    assert lines[1].startswith("error: timeout: the task had not finished after")
    assert "  unfinished a" in lines
    assert lines[-1] == NO_SCHEDULER


def test_ctrl_c_during_a_wait_says_the_tasks_still_run(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.cli.tasks as cli_tasks

    def interrupted(*_args: Any) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_tasks, "wait_and_report", interrupted)
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 1})

    result = invoke(app, "submit", "--wait", "-", stdin=body)

    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1] == (
        "stopped waiting; the task is stored and goes on without it (`flask tasks show a`)"
    )


NO_SCHEDULER = (
    "note: no scheduler is registered on this database; the tasks wait until one starts "
    "(the service with its scheduler, or `flask scheduler run`)"
)


def test_submit_says_when_no_running_scheduler_has_a_handler_for_its_type(app: Flask) -> None:
    from app.storage.database import utcnow

    now = utcnow()
    app.extensions["store"].register(
        {
            "id": "etl-only",
            "hostname": "test",
            "pid": 0,
            "started_at": now,
            "heartbeat_at": now,
            "task_types": json.dumps(["etl"]),
            "queues": json.dumps(["default"]),
        }
    )
    etl = json.dumps({"id": "a", "type": "etl", "duration_ms": 1})
    handled = succeed(app, "submit", "-", stdin=etl)
    assert handled.stderr == ""
    body = json.dumps({"tasks": [{"id": "b", "type": "report", "duration_ms": 1}]})
    unhandled = succeed(app, "submit", "-", stdin=body)
    assert unhandled.stderr.splitlines() == [
        "note: no running scheduler claims 'report' in its queue: those tasks wait until one "
        "does (TASK_HANDLERS, SCHEDULER_QUEUES of the service or of `flask scheduler run`)"
    ]
    other_queue = {"id": "c", "type": "etl", "duration_ms": 1, "queue": "other"}
    elsewhere = succeed(app, "submit", "-", stdin=json.dumps(other_queue))
    assert "claims 'etl' in its queue" in elsewhere.stderr  # etl, but in no queue it serves
    assert json.loads(unhandled.stdout)["tasks"][0]["status"] == "QUEUED"


def test_wait_says_nothing_of_schedulers_when_one_runs(app: Flask) -> None:
    app.extensions["scheduler"].start()
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 1})

    result = succeed(app, "submit", "--wait", "--timeout", "60", "-", stdin=body)

    assert "no scheduler" not in result.stderr
    assert json.loads(result.stdout)["status"] == "COMPLETED"


def test_wait_on_finished_tasks_says_nothing_of_schedulers(app: Flask) -> None:
    submit(app, "root")
    succeed(app, "cancel", "root")
    body = json.dumps({"id": "root", "type": "t", "duration_ms": 1})

    result = invoke(app, "submit", "--wait", "-", stdin=body)  # a replay, finished

    assert "note: an identical submission already existed" in result.stderr
    assert "scheduler" not in result.stderr


def test_wait_says_how_long_silent_schedulers_have_been(app: Flask) -> None:
    scheduler = app.extensions["scheduler"]
    scheduler.open()  # registered, then silent: as one killed, or run with a longer lease
    with app.extensions["store"].engine.begin() as conn:
        conn.exec_driver_sql("UPDATE scheduler_instances SET heartbeat_at = '2000-01-01 00:00:00'")
    body = json.dumps({"id": "a", "type": "t", "duration_ms": 1})

    result = invoke(app, "submit", "--wait", "--timeout", "0", "-", stdin=body)

    lease = app.config["LEASE_S"]
    assert result.stderr.startswith(
        f"note: no scheduler of this database has sent a heartbeat in the last {lease} s"
        " (LEASE_S) but to say it is stopping; if none is running, the tasks wait"
    )
    scheduler.finish_drain()


# -- show, list -------------------------------------------------------------------------


def test_show_prints_the_whole_task(app: Flask) -> None:
    submit(app, "a")

    shown = json.loads(succeed(app, "show", "a").stdout)

    assert shown == app.test_client().get("/api/tasks/a").get_json()
    assert "payload" in shown and "result" in shown


def test_an_unknown_id_is_a_clean_error(app: Flask) -> None:
    for command in ("show", "cancel", "retry"):
        stderr = assert_cli_error(invoke(app, command, "ghost"), "not_found")
        assert "ghost" in stderr


def test_list_prints_a_table_newest_first(app: Flask) -> None:
    submit(app, "first")
    submit(app, "second", "first")
    set_finished(app, "first", "COMPLETED", timedelta(0))

    lines = succeed(app, "list").stdout.splitlines()

    assert lines[0].split() == ["ID", "TYPE", "STATUS", "ATTEMPTS", "FINISHED_AT"]
    assert lines[1].split() == ["second", "t", "QUEUED", "0", "-"]
    first = lines[2].split()
    assert first[:4] == ["first", "t", "COMPLETED", "0"]
    assert first[4].endswith("Z")


def test_list_filters_and_pages(app: Flask) -> None:
    for task_id in ("a", "b", "c"):
        submit(app, task_id)
    succeed(app, "cancel", "b")

    cancelled = succeed(app, "list", "--status", "cancelled").stdout.splitlines()
    assert [line.split()[0] for line in cancelled[1:]] == ["b"]
    # Several: comma-separated, or the option again (it kept only the last one before).
    again = ["--status", "queued", "--status", "cancelled"]
    for several in (["--status", "cancelled, queued"], again):
        listed = succeed(app, "list", *several).stdout.splitlines()
        assert [line.split()[0] for line in listed[1:]] == ["c", "b", "a"], several
    assert succeed(app, "list", "--type", "other").stderr == "no tasks found\n"

    page = succeed(app, "list", "--limit", "2")
    assert [line.split()[0] for line in page.stdout.splitlines()[1:]] == ["c", "b"]
    cursor = page.stderr.split("--cursor ")[1].strip()
    rest = succeed(app, "list", "--limit", "2", "--cursor", cursor)
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:]] == ["a"]
    assert rest.stderr == ""


def test_list_refuses_a_bad_cursor_and_a_bad_status(app: Flask) -> None:
    assert_cli_error(invoke(app, "list", "--cursor", "nonsense"), "invalid_parameter")
    refused = invoke(app, "list", "--status", "done")
    assert refused.exit_code == 2
    assert "'QUEUED', 'RUNNING'" in refused.stderr  # the statuses as the API writes them


# -- cancel, retry ----------------------------------------------------------------------


def test_cancel_then_retry(app: Flask) -> None:
    submit(app, "a")
    submit(app, "b", "a")

    cancelled = json.loads(succeed(app, "cancel", "a").stdout)
    assert cancelled["status"] == "CANCELLED"
    assert json.loads(succeed(app, "show", "b").stdout)["status"] == "CANCELLED"

    retried = json.loads(succeed(app, "retry", "a").stdout)
    assert retried["status"] == "QUEUED"
    assert json.loads(succeed(app, "show", "b").stdout)["status"] == "QUEUED"


def test_cancel_and_retry_refuse_the_wrong_state(app: Flask) -> None:
    submit(app, "a")

    assert "QUEUED" in assert_cli_error(invoke(app, "retry", "a"), "invalid_state")
    succeed(app, "cancel", "a")
    assert "CANCELLED" in assert_cli_error(invoke(app, "cancel", "a"), "invalid_state")


# -- prune ------------------------------------------------------------------------------


def test_prune_older_than(app: Flask) -> None:
    for task_id in ("old", "recent", "queued"):
        submit(app, task_id)
    set_finished(app, "old", "COMPLETED", timedelta(hours=13))
    set_finished(app, "recent", "FAILED", timedelta(hours=11))

    assert succeed(app, "prune", "--older-than", "12h", "--yes").stdout == (
        "pruned 1 finished task older than 12h\n"
    )

    listed = succeed(app, "list").stdout
    assert "old" not in listed and "recent" in listed and "queued" in listed


def test_prune_defaults_to_retention_days(app: Flask) -> None:
    submit(app, "old")
    submit(app, "recent")
    set_finished(app, "old", "COMPLETED", timedelta(days=3))
    set_finished(app, "recent", "COMPLETED", timedelta(days=1))

    app.config["RETENTION_DAYS"] = 0
    assert "every task is kept" in succeed(app, "prune").stdout
    app.config["RETENTION_DAYS"] = 2
    assert succeed(app, "prune", "-y").stdout == "pruned 1 finished task older than 2d\n"

    assert_cli_error(invoke(app, "show", "old"), "not_found")
    succeed(app, "show", "recent")


def test_prune_dry_run_counts_by_status_and_deletes_nothing(app: Flask) -> None:
    for task_id in ("done", "failed", "cut-off", "recent"):
        submit(app, task_id)
    set_finished(app, "done", "COMPLETED", timedelta(hours=2))
    set_finished(app, "failed", "FAILED", timedelta(hours=2))
    set_finished(app, "cut-off", "UPSTREAM_FAILED", timedelta(hours=2))
    set_finished(app, "recent", "COMPLETED", timedelta(minutes=10))

    result = succeed(app, "prune", "--older-than", "1h", "--dry-run")

    assert result.stdout == (
        "would prune up to 3 finished tasks older than 1h: "
        "1 COMPLETED, 1 FAILED, 1 UPSTREAM_FAILED\n"
    )
    assert len(succeed(app, "list").stdout.splitlines()) == 1 + 4


def test_prune_off_a_terminal_needs_yes(app: Flask) -> None:
    submit(app, "old")
    set_finished(app, "old", "COMPLETED", timedelta(days=1))

    result = invoke(app, "prune", "--older-than", "0")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "pass --yes" in result.stderr and "up to 1 finished task" in result.stderr
    succeed(app, "show", "old")


def test_prune_with_nothing_to_delete_asks_nothing(app: Flask) -> None:
    submit(app, "queued")

    assert succeed(app, "prune", "--older-than", "0").stdout == (
        "nothing to prune: no finished task older than 0s\n"
    )


@pytest.mark.parametrize(("answer", "kept"), [("n\n", True), ("y\n", False)])
def test_prune_at_a_terminal_asks_first(
    app: Flask, monkeypatch: pytest.MonkeyPatch, answer: str, kept: bool
) -> None:
    monkeypatch.setattr("app.cli.tasks.stdin_is_terminal", lambda: True)
    submit(app, "old")
    set_finished(app, "old", "CANCELLED", timedelta(days=1))

    result = invoke(app, "prune", "--older-than", "12h", stdin=answer)

    assert "Delete up to 1 finished task older than 12h? [y/N]" in result.stderr
    assert result.exit_code == (1 if kept else 0)
    assert ("nothing deleted" in result.stderr) is kept and "Aborted" not in result.output
    assert (invoke(app, "show", "old").exit_code == 0) is kept


def test_prune_refuses_a_bad_duration(app: Flask) -> None:
    result = invoke(app, "prune", "--older-than", "7 weeks")

    assert result.exit_code == 2
    assert "not a duration" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43_200), ("7d", 604_800), ("0", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert Duration().convert(text, None, None) == timedelta(seconds=seconds)


# -- the database -----------------------------------------------------------------------


def test_a_database_error_is_a_clean_error(app: Flask) -> None:
    from app.extensions import db

    with app.app_context():
        db.drop_all()

    stderr = assert_cli_error(invoke(app, "list"), "database_error")

    assert "run `flask db upgrade` first" in stderr  # no tables: the fix, not SQL
    assert len(stderr.splitlines()) == 1


def test_wait_reports_progress_as_tasks_finish(app: Flask) -> None:
    submit(app, "p1")
    submit(app, "p2")
    succeed(app, "cancel", "p1")
    seen: list[int] = []
    engine = app.extensions["store"].engine
    progress = poll_until_finished(engine, ["p1", "p2"], time.monotonic(), seen.append)
    assert seen == [1] and progress.pending == ["p2"]
    succeed(app, "cancel", "p2")
    poll_until_finished(engine, ["p1", "p2"], time.monotonic() + 5, seen.append)
    assert seen[-1] == 2


# -- edit, delete, batch --------------------------------------------------------------------


def test_edit_delete_and_batch_actions(app: Flask) -> None:
    submit(app, "a")
    edited = json.loads(succeed(app, "edit", "a", "--priority", "5", "--queue", "q1").stdout)
    assert (edited["priority"], edited["queue"]) == (5, "q1")
    held = json.loads(succeed(app, "edit", "a", "--run-at", "2036-01-01T00:00:00Z").stdout)
    assert held["run_at"] == "2036-01-01T00:00:00.000Z"
    cleared = json.loads(succeed(app, "edit", "a", "--run-at", "none").stdout)
    assert cleared["run_at"] is None
    nothing = invoke(app, "edit", "a")  # nothing to change: the options, by their names
    assert nothing.exit_code == 2
    assert "give what to change: --priority, --run-at or --queue" in nothing.stderr
    assert "QUEUED" in assert_cli_error(invoke(app, "delete", "a"), "invalid_state")
    succeed(app, "cancel", "a")
    assert succeed(app, "delete", "a").stdout.split() == ["a"]
    assert_cli_error(invoke(app, "show", "a"), "not_found")

    done = app.test_client().post(
        "/api/tasks/batch", json={"tasks": [{"id": "b1", "type": "t", "duration_ms": 1}]}
    )
    batch_id = done.get_json()["batch_id"]
    shown = json.loads(succeed(app, "batch", "show", batch_id).stdout)
    assert shown["state"] == "queued" and shown["total"] == 1
    cancelled = json.loads(succeed(app, "batch", "cancel", batch_id).stdout)
    assert cancelled["changed"] == {"cancelled": 1, "stopping": 0}
    retried = json.loads(succeed(app, "batch", "retry", batch_id).stdout)
    assert retried["changed"] == {"retried": 1}
    assert_cli_error(invoke(app, "batch", "show", "ghost"), "not_found")
