"""app.client without a server: parsing, errors, Retry-After, which requests are repeated,
and `wait`'s long poll, fallback and deadlines, on a scripted transport and a fake clock."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.client import (
    ApiError,
    Attempt,
    BadRequest,
    Client,
    ClientError,
    Conflict,
    ConnectionFailed,
    InvalidAnswer,
    NotFound,
    Task,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    parse_retry_after,
    parse_time,
)

ROOT = Path(__file__).resolve().parents[2]
CREATED = "2026-11-27T14:19:54.502Z"
TASK = {
    "id": "a",
    "type": "etl",
    "duration_ms": 5,
    "status": "QUEUED",
    "dependencies": ["b"],
    "created_at": CREATED,
    "updated_at": CREATED,
    "payload": {},
    "priority": 0,
    "max_attempts": 1,
    "retry_backoff_ms": 1000,
    "timeout_ms": None,
    "run_at": None,
    "trigger_rule": "all_success",
    "queue": "default",
    "batch_id": None,
    "result": None,
    "error": None,
    "error_code": None,
    "progress": None,
    "attempts": 0,
    "started_at": None,
    "finished_at": None,
    "worker": None,
}
DONE = {**TASK, "status": "COMPLETED", "attempts": 1, "finished_at": CREATED}


@dataclass
class Reply:
    """A scripted answer, and the seconds the exchange takes on the fake clock."""

    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    takes: float = 0.0


def error(status: int, code: str, retry_after: str | None = None, **details: Any) -> Reply:
    """Return the API's error answer."""
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return Reply(status, {"error": "It went wrong.", "code": code, "details": details}, headers)


class Scripted(Client):
    """A Client whose network answers from a script, on a clock that only sleeps move."""

    def __init__(self, *replies: Reply, **options: Any) -> None:
        super().__init__("http://api.test/", sleep=self._nap, clock=lambda: self.now, **options)
        self.now = 0.0
        self.replies = list(replies)
        self.sent: list[tuple[str, str, Any, float]] = []
        self.slept: list[float] = []

    def _send(
        self, method: str, url: str, data: bytes | None, timeout: float
    ) -> tuple[int, Message, bytes]:
        self.sent.append((method, url, None if data is None else json.loads(data), timeout))
        reply = self.replies.pop(0)
        self.now += reply.takes
        headers = Message()
        for name, value in reply.headers.items():
            headers[name] = value
        raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        return reply.status, headers, raw

    def _nap(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def waits(self) -> list[str | None]:
        """Return the `wait` parameter of each request sent (None: none)."""
        return [parse_qs(urlsplit(url).query).get("wait", [None])[0] for _, url, _, _ in self.sent]


def test_times_parse_into_aware_utc_datetimes() -> None:
    assert parse_time(CREATED) == datetime(2026, 11, 27, 14, 19, 54, 502000, tzinfo=UTC)
    assert parse_time("2026-11-27T16:19:54+02:00") == datetime(2026, 11, 27, 14, 19, 54, tzinfo=UTC)
    assert parse_time("2026-11-27T14:19:54") == datetime(2026, 11, 27, 14, 19, 54, tzinfo=UTC)
    assert parse_time(None) is None
    for bad in ("yesterday", 1234, ""):
        with pytest.raises(InvalidAnswer):
            parse_time(bad)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0.0
    assert parse_retry_after("-3") == 0.0
    for useless in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(useless) is None


def test_a_task_is_typed_and_keeps_unknown_fields() -> None:
    task = Task.from_json({**TASK, "run_at": CREATED, "shiny_new_field": [1]})
    assert task.dependencies == ("b",) and task.payload == {}
    assert task.created_at == task.run_at == parse_time(CREATED)
    assert task.extra == {"shiny_new_field": [1]}
    assert not task.terminal
    with pytest.raises(AttributeError):
        task.status = "FAILED"  # type: ignore[misc]


def test_terminal_is_the_four_final_statuses() -> None:
    terminal = {
        s
        for s in ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED")
        if Task.from_json({**TASK, "status": s}).terminal
    }
    assert terminal == {"COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"}


def test_a_summary_or_an_older_server_leaves_defaults() -> None:
    summary = {k: v for k, v in TASK.items() if k not in ("payload", "result", "queue")}
    task = Task.from_json(summary)
    assert (task.payload, task.result, task.queue) == (None, None, "default")


def test_what_is_not_a_task_is_an_invalid_answer() -> None:
    bad_answers: list[object] = [[], "task", {"id": "a"}, {**TASK, "created_at": "then"}]
    for bad in bad_answers:
        with pytest.raises(InvalidAnswer):
            Task.from_json(bad)


def test_an_attempt_is_typed() -> None:
    attempt = Attempt.from_json(
        {
            "attempt": 1,
            "instance": None,
            "host": "box",
            "started_at": None,
            "finished_at": CREATED,
            "outcome": "FAILED",
            "error": "RuntimeError: boom",
            "error_code": "handler_error",
            "traceback": "Traceback (most recent call last): ...",
            "exit_signal": 9,
        }
    )
    assert (attempt.attempt, attempt.outcome, attempt.host) == (1, "FAILED", "box")
    assert attempt.finished_at == parse_time(CREATED) and attempt.started_at is None
    assert attempt.extra == {"exit_signal": 9}
    with pytest.raises(InvalidAnswer):
        Attempt.from_json({"attempt": 1})


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (429, TooManyRequests),
        (503, Unavailable),
        (500, ApiError),
        (507, ApiError),
    ],
)
def test_each_status_raises_its_class(status: int, kind: type[ApiError]) -> None:
    client = Scripted(error(status, "some_code", "7", field="why"), retries=0)
    with pytest.raises(kind) as caught:
        client.get("a")
    raised = caught.value
    assert type(raised) is kind and isinstance(raised, ClientError)
    assert (raised.status, raised.code, raised.message) == (status, "some_code", "It went wrong.")
    assert (raised.details, raised.retry_after) == ({"field": "why"}, 7.0)
    assert str(raised) == f"{status} some_code: It went wrong. (field: why)"


def test_an_error_page_that_is_not_the_apis_keeps_its_text() -> None:
    page = b"<html><body>\n<h1>502 Bad Gateway</h1>\n</body></html>"
    with pytest.raises(ApiError) as caught:
        Scripted(Reply(502, page)).get("a")
    assert (caught.value.code, caught.value.details) == ("http_error", {})
    assert "502 Bad Gateway" in caught.value.message


def test_a_success_that_is_not_json_is_an_invalid_answer() -> None:
    with pytest.raises(InvalidAnswer):
        Scripted(Reply(200, b"<html>login</html>")).get("a")


def test_ids_are_quoted_in_urls() -> None:
    client = Scripted(Reply(200, DONE), Reply(200, DONE), Reply(200, {"attempts": []}))
    client.get("a/b c?d")
    client.cancel("x/y")
    client.attempts("%")
    assert [(m, u) for m, u, _, _ in client.sent] == [
        ("GET", "http://api.test/api/tasks/a%2Fb%20c%3Fd"),
        ("POST", "http://api.test/api/tasks/x%2Fy/cancel"),
        ("GET", "http://api.test/api/tasks/%25/attempts"),
    ]


def test_the_real_transport_sends_json_and_the_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[Any] = []

    class Answered:
        status, headers = 201, Message()

        def __enter__(self) -> Answered:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self) -> bytes:
            return json.dumps(TASK).encode()

    def urlopen(request: Any, timeout: float) -> Answered:
        captured.append((request, timeout))
        return Answered()

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    Client("http://api.test", token="t0k", timeout=3).submit({"type": "etl"}, duration_ms=5)
    request, timeout = captured[0]
    assert (request.get_method(), request.full_url, timeout) == (
        "POST",
        "http://api.test/api/tasks",
        3,
    )
    assert json.loads(request.data) == {"type": "etl", "duration_ms": 5}
    assert request.get_header("Authorization") == "Bearer t0k"
    assert request.get_header("Content-type") == "application/json"


def test_a_refused_connection_raises_connection_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(ConnectionFailed) as caught:
        Client(f"http://127.0.0.1:{port}", timeout=5).get("a")
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, ClientError)


def test_a_read_is_repeated_after_retry_after() -> None:
    client = Scripted(error(503, "database_unavailable", "2"), error(429, "x"), Reply(200, TASK))
    assert client.get("a").id == "a"
    assert client.slept == [2.0, 1.0]  # no Retry-After: a second


def test_retry_after_is_capped() -> None:
    late = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True)
    client = Scripted(
        error(503, "x", "3600"), error(503, "x", late), Reply(200, TASK), max_retry_after=30
    )
    client.get("a")
    assert client.slept == [30.0, 30.0]


def test_the_retries_run_out() -> None:
    client = Scripted(*[error(503, "database_unavailable", "1")] * 3, retries=2)
    with pytest.raises(Unavailable):
        client.get("a")
    assert (len(client.sent), client.slept) == (3, [1.0, 1.0])
    client = Scripted(error(503, "database_unavailable", "1"), retries=0)
    with pytest.raises(Unavailable):
        client.get("a")
    assert client.slept == []


def test_other_errors_are_never_repeated() -> None:
    client = Scripted(error(500, "internal_error", "1"))
    with pytest.raises(ApiError):
        client.get("a")
    assert client.slept == []


@pytest.mark.parametrize(
    ("refusal", "repeated"),
    [
        (error(429, "queue_full", "1"), True),
        (error(503, "database_unavailable", "1"), True),
        (error(503, "outcome_unknown", "1"), False),  # a repeat could store it twice
    ],
)
def test_a_submission_without_id_is_repeated_only_when_nothing_was_stored(
    refusal: Reply, repeated: bool
) -> None:
    client = Scripted(refusal, Reply(201, TASK))
    if repeated:
        client.submit(type="etl", duration_ms=5)
    else:
        with pytest.raises(Unavailable):
            client.submit(type="etl", duration_ms=5)
    assert len(client.sent) == (2 if repeated else 1)


def test_submissions_with_ids_are_repeated_even_when_the_outcome_is_unknown() -> None:
    client = Scripted(error(503, "outcome_unknown", "1"), Reply(200, TASK))
    assert client.submit(id="a", type="etl", duration_ms=5).id == "a"
    batch = {"batch_id": "b" * 32, "tasks": [TASK, DONE]}
    client = Scripted(error(503, "outcome_unknown", "1"), Reply(200, batch))
    answered = client.submit_batch([{"id": "a"}, {"id": "c"}])
    assert (answered.batch_id, answered.created, len(answered.tasks)) == ("b" * 32, False, 2)
    assert client.sent[0][2] == {"tasks": [{"id": "a"}, {"id": "c"}]}
    client = Scripted(error(503, "outcome_unknown", "1"))
    with pytest.raises(Unavailable):
        client.submit_batch([{"id": "a"}, {"type": "etl"}])


def test_cancel_and_retry_are_repeated_but_a_raw_post_is_not() -> None:
    client = Scripted(error(503, "outcome_unknown"), Reply(200, TASK))
    client.cancel("a")
    client = Scripted(error(503, "database_unavailable"), Reply(200, TASK))
    client.retry("a")
    assert client.slept == [1.0]
    client = Scripted(error(503, "database_unavailable"))
    with pytest.raises(Unavailable):
        client.request("POST", "/api/queues/q/pause")
    client = Scripted(error(503, "database_unavailable"), Reply(200, {}))
    assert client.request("POST", "/api/queues/q/pause", retry=True).body == {}


def test_wait_long_polls_until_terminal() -> None:
    client = Scripted(Reply(200, TASK, takes=60), Reply(200, DONE, takes=3))
    assert client.wait("a", 300).status == "COMPLETED"
    assert client.waits() == ["60", "60"]
    assert client.sent[0][3] == pytest.approx(70.0)  # the read timeout covers the wait
    assert client.slept == []


def test_a_long_timeout_is_cut_in_requests_of_at_most_a_minute() -> None:
    client = Scripted(*[Reply(200, TASK, takes=60)] * 2, Reply(200, TASK, takes=30.5))
    task = client.wait("a", 150.5)
    assert task.status == "QUEUED"
    assert client.waits() == ["60", "60", "30.5"]


def test_a_busy_server_is_waited_out_until_the_deadline() -> None:
    busy = error(503, "too_many_waiting", "5")
    client = Scripted(busy, Reply(200, TASK, takes=4), busy, Reply(200, TASK))
    task = client.wait("a", 10)
    assert not task.terminal
    assert client.slept == [5.0, 1.0]  # the second Retry-After cut at the deadline
    assert client.waits() == ["10", "5", "1", None]  # at the deadline: a plain read


def test_an_older_server_is_polled_instead() -> None:
    refused = error(400, "invalid_parameter", wait="Unknown parameter.")
    client = Scripted(refused, *[Reply(200, TASK)] * 4, Reply(200, DONE))
    assert client.wait("a", 30).status == "COMPLETED"
    assert client.waits() == ["30", None, None, None, None, None]
    assert client.slept == pytest.approx([0.1, 0.2, 0.4, 0.8])
    client.replies = [Reply(200, TASK), Reply(200, TASK)]
    assert not client.wait("a", 0.05).terminal  # the same client polls at once
    assert client.waits()[-2:] == [None, None]
    assert client.slept[-1] == pytest.approx(0.05)


def test_wait_raises_what_is_not_a_wait() -> None:
    with pytest.raises(NotFound):
        Scripted(error(404, "not_found")).wait("a", 10)
    client = Scripted(Reply(200, TASK))
    assert client.wait("a", 0).status == "QUEUED"
    assert client.waits() == [None]


def _without_flask(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in which `import flask` fails."""
    prelude = "import sys; sys.modules['flask'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT / "scripts",
    )


def test_the_module_loads_by_its_path_with_the_standard_library_only() -> None:
    done = _without_flask(
        "import importlib.util\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(ROOT / 'app' / 'client.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['c'] = module\n"
        "spec.loader.exec_module(module)\n"
        "added = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "print(sorted(added - sys.stdlib_module_names - {'c'}))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_integration_script_runs_without_flask() -> None:
    script = ROOT / "scripts" / "integration_test.py"
    done = _without_flask(
        f"import runpy; sys.argv = [{str(script)!r}, '--help']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    assert done.returncode == 0, done.stderr
    assert "--base-url" in done.stdout


def test_an_api_error_pickles_whole() -> None:
    raised = Conflict(409, "invalid_state", "Too late.", {"root": "a"}, 2.0)
    copy = pickle.loads(pickle.dumps(raised))
    assert type(copy) is Conflict and str(copy) == str(raised)
    assert (copy.status, copy.code, copy.details, copy.retry_after) == (
        409,
        "invalid_state",
        {"root": "a"},
        2.0,
    )
