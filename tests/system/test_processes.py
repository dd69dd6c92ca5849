"""Real processes: crash recovery, graceful stop on signals, the CLI, the integration script.

Each test starts gunicorn or `flask scheduler run` in its own session on its own SQLite
file, and kills the whole process group at teardown; the logs are printed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.runtime.shutdown import REPEAT_WINDOW_S
from tests.support.servers import ROOT, Launcher, read_db, run_flask

SIGKILL, SIGTERM, SIGINT, SIGQUIT = signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT


def rows(db: Path) -> dict[str, dict[str, object]]:
    """Read every task straight from the file, keyed by id."""
    found = read_db(db, "SELECT id, status, attempts, error, error_code, worker FROM tasks")
    return {row["id"]: dict(row) for row in found}


def instances(db: Path) -> int:
    """Count the registered scheduler instances."""
    return int(read_db(db, "SELECT count(*) FROM scheduler_instances")[0][0])


def test_kill_9_then_restart_fails_the_interrupted_attempts(launcher: Launcher, db: Path) -> None:
    first = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2")
    first.submit("R1", 30_000)
    first.submit("R2", 30_000)
    first.submit("D1", 100, "R1")
    first.submit("Q", 100)
    first.wait_status("R1", "RUNNING")
    first.wait_status("R2", "RUNNING")
    assert first.task("Q")["status"] == "QUEUED"

    first.signal_group(SIGKILL)
    assert first.wait_exit(10) == -SIGKILL

    second = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2")
    # A restart on the same host recovers at start-up, before it serves: no waiting here.
    for task_id in ("R1", "R2"):
        task = second.task(task_id)
        assert task["status"] == "FAILED", task
        assert task["error_code"] == "interrupted", task
        assert "interrupted" in task["error"] and "exited" in task["error"], task
        assert task["attempts"] == 1, task
        assert task["finished_at"] is not None, task
    dependent = second.task("D1")
    assert dependent["status"] == "UPSTREAM_FAILED", dependent
    assert dependent["error_code"] == "upstream_failed" and "R1" in dependent["error"]
    assert dependent["attempts"] == 0
    queued = second.wait_status("Q", "COMPLETED")
    assert queued["attempts"] == 1 and queued["worker"] != second.task("R1")["worker"]
    assert second.get("/api/tasks?status=RUNNING").json() == []
    assert instances(db) == 1  # the dead instance was forgotten, the new one registered


def test_sigterm_drains_running_tasks_and_keeps_the_rest_queued(
    launcher: Launcher, db: Path
) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2", SHUTDOWN_GRACE_S="20")
    for task_id in ("A", "B", "C", "D"):
        server.submit(task_id, 1500)
    server.wait_status("A", "RUNNING")
    server.wait_status("B", "RUNNING")

    server.signal(SIGTERM)
    assert server.wait_exit(25) == 0

    tasks = rows(db)
    for task_id in ("A", "B"):
        assert tasks[task_id]["status"] == "COMPLETED", tasks[task_id]
        assert tasks[task_id]["attempts"] == 1
    for task_id in ("C", "D"):
        assert tasks[task_id]["status"] == "QUEUED", tasks[task_id]
        assert tasks[task_id]["attempts"] == 0 and tasks[task_id]["worker"] is None
    assert instances(db) == 0


@pytest.mark.parametrize("scheduler", ["true", "false"], ids=["scheduler", "api-only"])
@pytest.mark.parametrize("serve", ["gunicorn", "flask-run"])
def test_a_stopped_server_leaves_every_commit_in_the_database_file(
    launcher: Launcher, db: Path, tmp_path: Path, serve: str, scheduler: str
) -> None:
    """A copy of the SQLite file alone, taken after a stop, is a whole backup: nothing is
    left only in its write-ahead log."""
    ready = "running" if scheduler == "true" else "disabled"
    if serve == "gunicorn":
        server = launcher.gunicorn(
            db, ready=ready, WEB_CONCURRENCY="2", SCHEDULER_ENABLED=scheduler
        )
    else:
        server = launcher.flask_run(db, ready=ready, SCHEDULER_ENABLED=scheduler)
    server.submit_batch([{"id": f"t{i}", "type": "simulate", "duration_ms": 1} for i in range(10)])
    if scheduler == "true":
        for i in range(10):
            server.wait_status(f"t{i}", "COMPLETED")
    server.signal(SIGTERM)
    assert server.wait_exit(25) == 0
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())  # the file alone, as a plain copy takes it
    statuses = {row["id"]: row["status"] for row in read_db(copy, "SELECT id, status FROM tasks")}
    done = "COMPLETED" if scheduler == "true" else "QUEUED"
    assert statuses == {f"t{i}": done for i in range(10)}


def test_a_sigterm_to_make_run_drains_its_server(launcher: Launcher, db: Path) -> None:
    """A supervisor that signals only the process it started (`CMD ["make", "run"]`, a
    systemd unit) stops the server, which drains: make forwards the signal to gunicorn."""
    server = launcher.make_run(db, SHUTDOWN_GRACE_S="20")
    server.submit("long", 1500)
    server.wait_status("long", "RUNNING")
    server.signal(SIGTERM)  # make only
    server.wait_exit(25)  # make's status is its own; what counts is that its group ended
    assert rows(db)["long"]["status"] == "COMPLETED"
    assert instances(db) == 0  # deregistered: the drain ran to its end


def test_sigterm_stops_claiming_at_once(launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="1", SHUTDOWN_GRACE_S="20")
    server.submit("first", 700)
    server.submit("next", 300)
    server.wait_status("first", "RUNNING")

    # A client's kept-alive connection holds gunicorn's worker loop for up to two more
    # seconds after the signal; "first" ends meanwhile, and its slot must stay empty.
    with requests.Session() as client:
        assert client.get(server.base_url + "/health", timeout=5).status_code == 200
        server.signal(SIGTERM)
        assert server.wait_exit(25) == 0

    tasks = rows(db)
    assert tasks["first"]["status"] == "COMPLETED", tasks["first"]
    assert tasks["next"]["status"] == "QUEUED" and tasks["next"]["attempts"] == 0, tasks["next"]


def test_sigterm_after_a_short_grace_requeues_running_tasks(launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2", SHUTDOWN_GRACE_S="1")
    server.submit("L1", 60_000)
    server.submit("L2", 60_000)
    server.wait_status("L1", "RUNNING")
    server.wait_status("L2", "RUNNING")

    server.signal(SIGTERM)
    assert server.wait_exit(10) == 0  # the tasks had 59 s to go
    # The built-in handler returns as soon as it is asked to stop: nothing lingers.
    assert "ignored the stop" not in server.log()

    tasks = rows(db)
    for task_id in ("L1", "L2"):
        task = tasks[task_id]
        assert task["status"] == "QUEUED", task
        assert task["attempts"] == 1 and task["error"] is None and task["error_code"] is None

    again = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2")
    for task_id in ("L1", "L2"):
        assert again.wait_status(task_id, "RUNNING")["attempts"] == 2


@pytest.mark.parametrize("sig", [SIGTERM, SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_same_signal_twice_is_one_graceful_stop(
    launcher: Launcher, db: Path, sig: signal.Signals
) -> None:
    server = launcher.gunicorn(db, MAX_CONCURRENT_TASKS="2", SHUTDOWN_GRACE_S="20")
    server.submit("A", 1500)
    server.submit("B", 1500)
    server.wait_status("A", "RUNNING")
    server.wait_status("B", "RUNNING")

    # A terminal or a supervisor signals the whole group: master and worker alike.
    server.signal_group(sig)
    time.sleep(0.3)
    server.signal_group(sig)
    assert server.wait_exit(25) == 0

    tasks = rows(db)
    assert tasks["A"]["status"] == tasks["B"]["status"] == "COMPLETED", tasks


def test_a_second_sigint_a_second_later_skips_the_grace(launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db, SHUTDOWN_GRACE_S="30")
    server.submit("L", 60_000)
    server.wait_status("L", "RUNNING")

    server.signal_group(SIGINT)
    time.sleep(1.2)  # what SPEC section 7 calls "a second or more later"
    server.signal_group(SIGINT)
    assert server.wait_exit(10) == 0  # well before the 30 s grace

    task = rows(db)["L"]
    assert task["status"] == "QUEUED" and task["attempts"] == 1, task


def test_flask_scheduler_run_executes_and_stops_on_signals(launcher: Launcher, db: Path) -> None:
    api = launcher.gunicorn(db, ready="disabled", SCHEDULER_ENABLED="false")
    api.submit("a", 200)
    api.submit("b", 200, "a")
    # The API process runs nothing itself.
    assert [t["status"] for t in api.get("/api/tasks").json()] == ["QUEUED", "QUEUED"]

    first = launcher.scheduler(db, MAX_CONCURRENT_TASKS="2", SHUTDOWN_GRACE_S="20")
    worker = api.wait_status("b", "COMPLETED")["worker"]
    assert api.task("a")["worker"] == worker
    assert f"scheduler {worker} running 2 slots" in first.log()
    api.submit("c", 800)
    api.wait_status("c", "RUNNING")
    first.signal(SIGTERM)
    assert first.wait_exit(20) == 0
    assert api.task("c")["status"] == "COMPLETED"

    second = launcher.scheduler(db, MAX_CONCURRENT_TASKS="2", SHUTDOWN_GRACE_S="20")
    api.submit("d", 800)
    api.wait_status("d", "RUNNING")
    second.signal(SIGINT)
    assert second.wait_exit(20) == 0
    assert api.task("d")["status"] == "COMPLETED"

    third = launcher.scheduler(db, MAX_CONCURRENT_TASKS="2", SHUTDOWN_GRACE_S="30")
    api.submit("e", 60_000)
    api.wait_status("e", "RUNNING")
    third.signal(SIGQUIT)
    assert third.wait_exit(10) == 0  # well before its 30 s grace or the task's 60 s
    requeued = api.task("e")
    assert requeued["status"] == "QUEUED" and requeued["attempts"] == 1, requeued
    assert instances(db) == 0


def test_a_submission_to_an_api_process_wakes_the_scheduler_process_at_once(
    launcher: Launcher, db: Path
) -> None:
    api = launcher.gunicorn(db, ready="disabled", SCHEDULER_ENABLED="false")
    # Its polling tick is ten minutes away: only a wake-up gets these tasks run in time.
    launcher.scheduler(db, POLLING_INTERVAL="600000")
    api.submit("first", 1)
    api.wait_status("first", "COMPLETED", timeout=60)
    # The scheduler is asleep now, having recorded the first; the second wakes it again.
    api.submit("second", 1)
    api.submit("third", 1, "second")
    assert api.wait_status("third", "COMPLETED", timeout=60)["attempts"] == 1


def test_a_request_waiting_in_the_api_process_hears_the_scheduler_process_end_its_task(
    launcher: Launcher, db: Path
) -> None:
    # Every polling tick, and so the waiting request's safety-net read, is ten minutes
    # away: only the scheduler process's word gets an answer before the request's end.
    api = launcher.gunicorn(
        db, ready="disabled", SCHEDULER_ENABLED="false", POLLING_INTERVAL="600000"
    )
    launcher.scheduler(db, POLLING_INTERVAL="600000")
    api.submit("slow", 500)
    answer = requests.get(f"{api.base_url}/api/tasks/slow?wait=60", timeout=30)
    assert answer.status_code == 200
    assert answer.json()["status"] == "COMPLETED"


@pytest.mark.parametrize("runner", ["gunicorn", "flask scheduler run"])
def test_a_handler_that_ignores_the_stop_does_not_keep_the_process(
    launcher: Launcher, db: Path, runner: str
) -> None:
    handlers = {"TASK_HANDLERS": "tests.support.sample_handlers", "SHUTDOWN_GRACE_S": "1"}
    if runner == "gunicorn":
        api = server = launcher.gunicorn(db, **handlers)
    else:
        api = launcher.gunicorn(db, ready="disabled", SCHEDULER_ENABLED="false", **handlers)
        server = launcher.scheduler(db, **handlers)
    api.submit("stuck", 60_000, type="stubborn")
    api.wait_status("stuck", "RUNNING")
    server.signal(SIGTERM)
    assert server.wait_exit(20) == 0  # not the 60 s the handler sleeps
    assert "1 handler(s) ignored the stop and still run" in server.log()
    task = rows(db)["stuck"]
    assert task["status"] == "QUEUED" and task["attempts"] == 1, task


def test_integration_script_passes_against_gunicorn(launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db)
    script = ROOT / "scripts" / "integration_test.py"
    done = subprocess.run(
        [sys.executable, str(script), "--base-url", server.base_url, "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_flask_db_upgrade_starts_no_scheduler(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    done = run_flask(path, "db", "upgrade")
    assert done.returncode == 0, done.stdout + done.stderr
    assert instances(path) == 0
    assert " started: " not in done.stdout + done.stderr  # the scheduler's start-up line


@pytest.mark.parametrize("late", [SIGTERM, SIGINT, signal.SIGQUIT])
def test_a_stop_signal_as_the_scheduler_exits_leaves_its_exit_status_0(
    launcher: Launcher, db: Path, late: signal.Signals
) -> None:
    """Signals keep coming (a supervisor repeating its stop) until the process is gone:
    one that landed while Python tore itself down killed it with the signal's status
    (143, 130, or 131 and a core dump), though the drain was over and nothing was lost."""
    server = launcher.scheduler(db)
    server.signal(SIGTERM)
    deadline = time.monotonic() + 30
    while "scheduler stopped" not in server.log() and server.proc.poll() is None:
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.005)
    while server.proc.poll() is None:  # the barrage: every 5 ms until it exits
        assert time.monotonic() < deadline, server.log()[-2000:]
        with contextlib.suppress(ProcessLookupError):
            server.signal(late)
        time.sleep(0.005)
    assert server.wait_exit(10) == 0, server.log()[-2000:]


def test_flask_run_serves_and_runs_tasks_with_one_scheduler(launcher: Launcher, db: Path) -> None:
    server = launcher.flask_run(db, SHUTDOWN_GRACE_S="20")
    server.submit("a", 10)
    server.submit("b", 10, "a")
    server.wait_status("b", "COMPLETED")
    assert server.get("/health").status_code == 200
    assert instances(db) == 1

    server.submit("c", 800)
    server.wait_status("c", "RUNNING")
    server.signal(SIGINT)  # Ctrl-C: the running task finishes, then the server stops
    assert server.wait_exit(20) == 0
    assert rows(db)["c"]["status"] == "COMPLETED"
    assert instances(db) == 0


def test_flask_run_hurried_by_a_second_ctrl_c_puts_the_running_task_back(
    launcher: Launcher, db: Path
) -> None:
    server = launcher.flask_run(db, SHUTDOWN_GRACE_S="60")
    server.submit("long", 60_000)
    server.wait_status("long", "RUNNING")
    server.signal(SIGINT)
    server.wait_log("SIGINT: draining")
    time.sleep(REPEAT_WINDOW_S + 0.2)  # a copy of the first within the window would not hurry
    server.signal(SIGINT)
    assert server.wait_exit(20) == 0  # not after the 60 s grace period
    log = server.log()
    assert "SIGINT: stopping without waiting for running tasks" in log
    assert rows(db)["long"]["status"] == "QUEUED"
    # The drain's state changes are logged before the line that ends it.
    assert log.index("task long QUEUED") < log.index(" stopped\n"), log[-1500:]
    assert instances(db) == 0


def test_flask_run_with_the_reloader_runs_a_scheduler_only_in_the_serving_child(
    launcher: Launcher, db: Path
) -> None:
    server = launcher.flask_run(db, "--reload")
    server.submit("a", 10)
    server.wait_status("a", "COMPLETED")
    assert instances(db) == 1  # the watching parent built the app too, but runs none
    assert server.log().count(" started: ") == 1
    server.signal_group(SIGINT)
    server.wait_exit(20)
    assert instances(db) == 0


def test_flask_run_with_the_reloader_drains_on_ctrl_c_and_sigquit_hurries(
    launcher: Launcher, db: Path
) -> None:
    server = launcher.flask_run(db, "--reload", SHUTDOWN_GRACE_S="60")
    server.submit("long", 60_000)
    server.submit("after", 1, "long")
    server.wait_status("long", "RUNNING")
    server.signal_group(SIGINT)  # Ctrl-C: the watching parent must not kill the draining child
    server.wait_log("SIGINT: draining: 1 running task(s) get up to 60 s")
    server.signal_group(signal.SIGQUIT)
    assert server.wait_exit(20) == 0
    assert rows(db)["long"]["status"] == "QUEUED"  # put back, not left RUNNING
    assert rows(db)["after"]["status"] == "QUEUED"
    assert instances(db) == 0


def test_flask_run_with_the_reloader_drains_on_sigterm(launcher: Launcher, db: Path) -> None:
    """SIGTERM to the watching parent alone (a process manager stopping it): the parent
    exited at once, the serving child was killed, and its task was left RUNNING."""
    server = launcher.flask_run(db, "--reload", SHUTDOWN_GRACE_S="60")
    server.submit("short", 1500)
    server.wait_status("short", "RUNNING")
    server.signal(SIGTERM)
    server.wait_log("SIGTERM: draining")  # the child's own drain, not one at its exit
    server.signal(SIGTERM)  # a supervisor repeating itself: still the one graceful stop
    assert server.wait_exit(30) == 0
    assert rows(db)["short"]["status"] == "COMPLETED"  # finished within the grace
    assert instances(db) == 0
    assert "Traceback" not in server.log()


def test_a_reload_drains_the_running_task_before_the_new_child_starts(
    launcher: Launcher, db: Path, tmp_path: Path
) -> None:
    trigger = tmp_path / "trigger.txt"
    trigger.write_text("0")
    options = ("--reload", "--extra-files", str(trigger))
    server = launcher.flask_run(db, *options, SHUTDOWN_GRACE_S="30")
    server.submit("long", 2000)
    server.wait_status("long", "RUNNING")
    trigger.write_text("1")
    later = time.time() + 5  # a later mtime, whatever the file system's resolution
    os.utime(trigger, (later, later))
    server.wait_log("reloading: draining")
    done = server.wait_status("long", "COMPLETED")
    assert done["attempts"] == 1 and done["error_code"] is None, done
    server.wait_ready()  # the new child serves, with its own scheduler
    server.signal_group(SIGINT)
    server.wait_exit(20)


def test_clients_stalled_mid_request_hold_no_thread_past_the_client_timeout(
    launcher: Launcher, db: Path
) -> None:
    """Three clients send a POST's headers and a byte of its body, then nothing, to a
    worker of two request threads: both held them for good (gthread reads with no
    timeout), and /health went unanswered while they stayed connected."""
    server = launcher.gunicorn(db, GUNICORN_THREADS="2", CLIENT_TIMEOUT_S="1")
    head = (
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    port = int(server.base_url.rsplit(":", 1)[1])
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        for conn in stalled:
            conn.sendall(head)
        health = requests.get(f"{server.base_url}/health", timeout=20)
        assert health.status_code == 200
        answers = [_until_closed(conn) for conn in stalled[:2]]
    finally:
        for conn in stalled:
            conn.close()
    for answer in answers:
        # Let go with an answer, or closed at once: never held.
        assert answer == "" or answer.startswith("HTTP/1.1 400"), answer
        assert "stopped arriving" in answer or answer == "", answer  # invalid_json
    assert server.proc.poll() is None  # the server lives on
    assert "sent or read nothing for 1 s" not in server.log()  # answered, not a socket error


def test_a_client_reading_a_large_answer_slowly_but_steadily_gets_all_of_it(
    launcher: Launcher, db: Path
) -> None:
    """The client timeout bounds silence in a request, not the time an answer takes to
    be read: a timeout on the socket cut a slow reader's 14 MB answer partway."""
    server = launcher.gunicorn(db, CLIENT_TIMEOUT_S="1")
    tasks = [{"id": f"big-{k}", "type": "simulate", "duration_ms": 1} for k in range(20_000)]
    body = json.dumps({"tasks": tasks}).encode()
    json_type = {"Content-Type": "application/json"}
    first = requests.post(
        f"{server.base_url}/api/tasks/batch", data=body, timeout=120, headers=json_type
    )
    assert first.status_code == 201
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.settimeout(30)
        conn.connect(("127.0.0.1", port))
        conn.sendall(
            b"POST /api/tasks/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        received = b""
        began = time.monotonic()
        while chunk := conn.recv(65536):
            received += chunk
            time.sleep(0.01)  # a slow reader: about 6 MB/s at most
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]  # a replay
    assert time.monotonic() - began > 1  # longer than the client timeout
    length = re.search(rb"Content-Length: (\d+)", head)
    assert length is not None and len(answer) == int(length.group(1)) > 8_000_000
    assert json.loads(answer)["tasks"][-1]["id"] == "big-19999"


def _raw(port: int, request: bytes, half_close: bool = False) -> tuple[str, dict[str, object]]:
    """Send `request` as it is; return the answer's status line and its JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        head, _, body = _until_closed(conn).partition("\r\n\r\n")
    assert "Content-Type: application/json" in head, head
    return head.splitlines()[0], json.loads(body)


def test_requests_the_server_cannot_read_answer_in_json_and_store_nothing(
    launcher: Launcher, db: Path
) -> None:
    """gunicorn answered these itself, with HTML pages; a body shorter than its
    Content-Length, ended by the client, was read as a whole body and stored."""
    server = launcher.gunicorn(db)
    port = int(server.base_url.rsplit(":", 1)[1])
    body = b'{"id": "short", "type": "etl", "duration_ms": 5}'
    status, short = _raw(
        port,
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body) + 52}\r\n\r\n".encode()
        + body,
        half_close=True,
    )
    assert status.startswith("HTTP/1.1 400") and short["code"] == "invalid_json", short
    assert "before the length its Content-Length header announced" in str(short["error"])

    status, long_line = _raw(port, b"GET /api/tasks/" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")
    assert status.startswith("HTTP/1.1 414") and long_line["code"] == "http_error", long_line
    assert "shorten the URL" in str(long_line["error"])

    big_header = b"X-Big: " + b"h" * 9000 + b"\r\n"
    status, headers = _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + big_header + b"\r\n")
    assert status.startswith("HTTP/1.1 431") and headers["code"] == "http_error", headers

    bad_length = b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"
    status, framing = _raw(port, bad_length)
    assert status.startswith("HTTP/1.1 400") and framing["code"] == "bad_request", framing
    status, garbage = _raw(port, b"\x16\x03\x01 hello\r\n\r\n")
    assert status.startswith("HTTP/1.1 400") and garbage["code"] == "bad_request", garbage

    bad_chunks = (
        b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"
    )
    status, chunks = _raw(port, bad_chunks)
    assert status.startswith("HTTP/1.1 400") and chunks["code"] == "bad_request", chunks
    assert "framing is malformed" in str(chunks["error"])

    assert server.get("/api/tasks").json() == []  # nothing stored
    server.submit("kept", 60_000)
    status, cut = _raw(
        port,
        b"POST /api/tasks/kept/cancel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: 50\r\n\r\n{}",
        half_close=True,
    )
    assert status.startswith("HTTP/1.1 400") and cut["code"] == "invalid_json", cut
    assert server.task("kept")["status"] in ("QUEUED", "RUNNING")  # not cancelled
    assert server.proc.poll() is None


def _until_closed(conn: socket.socket) -> str:
    """Read what the server sends until it closes the connection."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received.decode(errors="replace")
