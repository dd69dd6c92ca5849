"""A Python client of the task scheduler's REST API (docs/api.md), standard library only.

    client = Client("http://127.0.0.1:3000", token=os.environ.get("API_TOKEN"))
    client.submit(id="extract", type="etl", duration_ms=1000)
    task = client.wait("extract", timeout=120)
    print(task.status, task.finished_at)

Every method answers typed values (`Task`, `Batch`, `Attempt`) or raises a `ClientError`:
an `ApiError` subclass for an error the API answered, `ConnectionFailed` when no answer came.
A 429 or 503 is repeated after its `Retry-After`, up to `retries` times, for the requests
that are safe to repeat (reads, submissions, cancel and retry: see `Client`).

This module imports only the standard library, but `import app.client` runs
app/__init__.py, which imports Flask: a program without Flask loads this file by its path,
as scripts/integration_test.py does.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

TERMINAL = frozenset({"COMPLETED", "FAILED", "UPSTREAM_FAILED", "CANCELLED"})
MAX_WAIT_S = 60.0  # the longest `?wait=` the server accepts
DEFAULT_RETRY_AFTER_S = 1.0  # for a 429 or 503 without a usable Retry-After
POLL_FIRST_S, POLL_MAX_S = 0.1, 1.0  # polling, when the server cannot long-poll
TIME_FIELDS = frozenset({"created_at", "updated_at", "run_at", "started_at", "finished_at"})


class ClientError(Exception):
    """Anything this client raises about a request."""


class ConnectionFailed(ClientError, ConnectionError):
    """The server could not be reached, or the connection broke before a whole answer."""


class InvalidAnswer(ClientError, ValueError):
    """A success answer that is not what the API sends (not JSON, a field missing)."""


class ApiError(ClientError):
    """An error the API answered: `{"error": message, "code": code, "details": {...}}`.

    `retry_after` is the answer's Retry-After in seconds, or None. A body that is not the
    API's (a proxy's page) gives the code `http_error` and the start of its text.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}{_shown_details(details)}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (to another process) whole
        return type(self), (self.status, self.code, self.message, self.details, self.retry_after)


# The details an error's text shows at most; all of them stay in `details`.
SHOWN_DETAILS = 5


def _shown_details(details: Mapping[str, Any] | None) -> str:
    """Return the first details as ` (field: message; ...)`, for the error's text."""
    if not details:
        return ""
    items = list(details.items())
    shown = "; ".join(f"{name}: {str(value).rstrip('.')}" for name, value in items[:SHOWN_DETAILS])
    more = f"; {len(items) - SHOWN_DETAILS} more" if len(items) > SHOWN_DETAILS else ""
    return f" ({shown[:1000]}{more})"


class BadRequest(ApiError):
    """400: validation_error, invalid_json, unknown_dependency, invalid_parameter..."""


class Unauthorized(ApiError):
    """401: API_TOKEN is set on the server and the token is missing or wrong."""


class NotFound(ApiError):
    """404: no such task (or route)."""


class Conflict(ApiError):
    """409: duplicate_id (same id, other body) or invalid_state (cancel or retry)."""


class TooManyRequests(ApiError):
    """429 queue_full: MAX_QUEUED_TASKS is reached; try again after `retry_after`."""


class Unavailable(ApiError):
    """503: the database (or a limit of the server) cannot serve it now; try again later."""


ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
    503: Unavailable,
}


def parse_time(value: object) -> datetime | None:
    """Parse the API's `2026-11-27T14:19:54.502Z` (or None) into an aware UTC datetime."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise InvalidAnswer(f"not an ISO 8601 time: {value!r:.60}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return a Retry-After header's seconds (delay-seconds or an HTTP date), or None."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


Loaded = TypeVar("Loaded", "Task", "Attempt")


def _load(cls: type[Loaded], data: object) -> Loaded:
    """Build `cls` from a JSON object: times parsed, unknown fields kept in `extra`."""
    if not isinstance(data, dict):
        raise InvalidAnswer(f"a {cls.__name__} must be a JSON object, got {data!r:.100}")
    names = {f.name for f in fields(cls)} - {"extra"}
    known: dict[str, Any] = {
        k: parse_time(v) if k in TIME_FIELDS else v for k, v in data.items() if k in names
    }
    if isinstance(known.get("dependencies"), list):
        known["dependencies"] = tuple(known["dependencies"])
    try:
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})
    except TypeError as exc:  # a required field is missing
        raise InvalidAnswer(f"a {cls.__name__} lacks a field: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class Task:
    """A task as the API shows it (docs/api.md, "Task fields"), times as UTC datetimes.

    The original seven fields are required; the others default to the API's defaults when
    an answer leaves them out (an older server). Fields this client does not know are kept
    in `extra`, so that a newer server does not break it.
    """

    id: str
    type: str
    duration_ms: int
    status: str
    dependencies: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] | None = None
    priority: int = 0
    max_attempts: int = 1
    retry_backoff_ms: int = 1000
    timeout_ms: int | None = None
    run_at: datetime | None = None
    trigger_rule: str = "all_success"
    queue: str = "default"
    batch_id: str | None = None
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    progress: int | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """Tell whether the task has ended: COMPLETED, FAILED, UPSTREAM_FAILED or CANCELLED."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: object) -> Task:
        """Build a Task from the API's JSON object; raise InvalidAnswer for anything else."""
        return _load(cls, data)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One attempt of a task, from `GET /api/tasks/<id>/attempts`.

    `outcome` is COMPLETED, FAILED, CANCELLED or QUEUED (put back in the queue, e.g. at a
    shutdown), or RUNNING for the attempt running now (listed last, not finished);
    `traceback` is the handler's, when it raised.
    """

    attempt: int
    instance: str | None = None
    host: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str
    error: str | None = None
    error_code: str | None = None
    traceback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: object) -> Attempt:
        """Build an Attempt from the API's JSON object; raise InvalidAnswer for anything else."""
        return _load(cls, data)


@dataclass(frozen=True)
class Batch:
    """The answer of a batch submission: its id, its tasks in the order sent, and whether it
    was created now (201) or was the replay of an identical batch (200)."""

    batch_id: str
    tasks: tuple[Task, ...]
    created: bool


@dataclass(frozen=True)
class Answer:
    """One success answer of `Client.request`: status, headers, and the decoded JSON body
    (None when empty)."""

    status: int
    headers: Message
    body: Any


def _always(error: ApiError) -> bool:
    return True


def _never(error: ApiError) -> bool:
    return False


def _resubmittable(tasks: Iterable[Mapping[str, Any]]) -> Callable[[ApiError], bool]:
    """Say which refusals of a submission may be repeated. A 429 and a 503
    `database_unavailable` stored nothing; after a 503 `outcome_unknown` the tasks may be
    stored, and only their ids make the repeat a harmless replay (200)."""
    with_ids = all(isinstance(task, Mapping) and task.get("id") for task in tasks)
    return lambda error: with_ids or error.status == 429 or error.code == "database_unavailable"


def _seconds(value: float) -> str:
    """Render seconds for `?wait=`: at most three decimals, no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


class Client:
    """A client of one server, e.g. `Client("http://127.0.0.1:3000", token=...)`.

    `timeout` bounds each HTTP request, in seconds (a batch of 100,000 tasks may need
    more). A 429 or 503 is repeated after its Retry-After (at most `max_retry_after`
    seconds, 1 s when absent), up to `retries` times, then raised: reads, cancel and retry
    always (docs/api.md: a repeated cancel or retry never acts twice, though after a 503
    `outcome_unknown` it may answer 409 `invalid_state` because the first one took
    effect), submissions when nothing was stored or every task has an id (the repeat is
    then a replay). `sleep` and `clock` (monotonic seconds) are there for tests.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        *,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = max(0, retries)
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._clock = clock
        self._long_poll = True  # until a server refuses `?wait=`

    def submit(self, task: Mapping[str, Any] | None = None, /, **fields: Any) -> Task:
        """Submit one task, given as a dict, as keywords, or both (keywords win).

        Answers the stored task: created now (201), or the existing one when the same id
        was submitted with an identical body (200). Give ids: only then is repeating a
        submission whose outcome is unknown safe.
        """
        body = {**(task or {}), **fields}
        answer = self._call("POST", "/api/tasks", body, repeat=_resubmittable([body]))
        return Task.from_json(answer.body)

    def submit_batch(self, tasks: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> Batch:
        """Submit a whole graph in one transaction: all of it is stored, or nothing.

        `tasks` is the list of task bodies (or the API's body, `{"tasks": [...]}`).
        Dependencies may name tasks of the batch, in any order. The server picks the
        `batch_id`; an identical batch again answers the same batch (`created` False).
        """
        given: Any = tasks
        if isinstance(given, Mapping):  # the API's body, given whole
            given = given.get("tasks")
            if not isinstance(given, list | tuple):
                raise TypeError('submit_batch takes the tasks, or a body {"tasks": [...]}')
        items = [dict(task) for task in given]
        answer = self._call(
            "POST", "/api/tasks/batch", {"tasks": items}, repeat=_resubmittable(items)
        )
        body = answer.body
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
            raise InvalidAnswer(f"not a batch: {body!r:.100}")
        found = tuple(Task.from_json(item) for item in body["tasks"])
        return Batch(str(body.get("batch_id")), found, created=answer.status == 201)

    def get(self, task_id: str) -> Task:
        """Return the task, or raise NotFound."""
        return Task.from_json(self._call("GET", self._path(task_id), repeat=_always).body)

    def wait(self, task_id: str, timeout: float) -> Task:
        """Return the task as soon as it is terminal, or as it stands after `timeout` s.

        Long-polls `GET /api/tasks/<id>?wait=S` (at most 60 s a request, repeated for a
        longer timeout); a 429 or 503 there is waited out (its Retry-After, at most until
        the deadline) and the request repeated. A server that refuses `?wait=` (400: an
        older one) is polled instead, every 0.1 s growing to 1 s.
        """
        deadline = self._clock() + max(0.0, timeout)
        interval = POLL_FIRST_S
        while True:
            remaining = deadline - self._clock()
            if self._long_poll and remaining >= 0.001:
                seconds = min(remaining, MAX_WAIT_S)
                try:
                    answer = self._call(
                        "GET",
                        self._path(task_id),
                        query={"wait": _seconds(seconds)},
                        timeout=self.timeout + seconds,
                    )
                except BadRequest:
                    self._long_poll = False
                    continue
                except (TooManyRequests, Unavailable) as exc:
                    self._sleep(min(self._delay(exc), max(0.0, deadline - self._clock())))
                    continue
                task = Task.from_json(answer.body)
                if task.terminal or self._clock() >= deadline:
                    return task
                continue
            task = self.get(task_id)
            remaining = deadline - self._clock()
            if task.terminal or remaining <= 0:
                return task
            self._sleep(min(interval, remaining))
            interval = min(2 * interval, POLL_MAX_S)

    def cancel(self, task_id: str) -> Task:
        """Cancel a task and answer it as it is now: a QUEUED one is CANCELLED at once, a
        RUNNING one still RUNNING but asked to stop. Conflict (`invalid_state`) when the
        task is already terminal."""
        return Task.from_json(
            self._call("POST", self._path(task_id, "/cancel"), repeat=_always).body
        )

    def retry(self, task_id: str) -> Task:
        """Put a FAILED, UPSTREAM_FAILED or CANCELLED task back to QUEUED with a fresh
        budget. Conflict (`invalid_state`) for another status, or when a dependency must
        be retried instead (`details["root"]` names it)."""
        return Task.from_json(
            self._call("POST", self._path(task_id, "/retry"), repeat=_always).body
        )

    def attempts(self, task_id: str) -> list[Attempt]:
        """Return the task's ended attempts, oldest first."""
        body = self._call("GET", self._path(task_id, "/attempts"), repeat=_always).body
        if not isinstance(body, dict) or not isinstance(body.get("attempts"), list):
            raise InvalidAnswer(f"not a task's attempts: {body!r:.100}")
        return [Attempt.from_json(item) for item in body["attempts"]]

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        query: Mapping[str, str] | None = None,
        retry: bool | None = None,
    ) -> Answer:
        """Send any request, e.g. `request("GET", "/health")`, and return the raw answer.

        Raises ApiError for an error answer. A 429 or 503 is repeated as `retry` says
        (default: for a GET only).
        """
        method = method.upper()
        again = method == "GET" if retry is None else retry
        return self._call(method, path, body, query=query, repeat=_always if again else _never)

    def _path(self, task_id: str, suffix: str = "") -> str:
        return "/api/tasks/" + urllib.parse.quote(task_id, safe="") + suffix

    def _delay(self, error: ApiError) -> float:
        """Seconds to wait before repeating a refused request."""
        wanted = DEFAULT_RETRY_AFTER_S if error.retry_after is None else error.retry_after
        return min(wanted, self.max_retry_after)

    def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        query: Mapping[str, str] | None = None,
        repeat: Callable[[ApiError], bool] = _never,
        timeout: float | None = None,
    ) -> Answer:
        """Send a request, repeating a 429 or 503 that `repeat` accepts, up to `retries`."""
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        tries = 0
        while True:
            try:
                return self._answer(method, url, data, self.timeout if timeout is None else timeout)
            except (TooManyRequests, Unavailable) as exc:
                if tries >= self.retries or not repeat(exc):
                    raise
                tries += 1
                self._sleep(self._delay(exc))

    def _answer(self, method: str, url: str, data: bytes | None, timeout: float) -> Answer:
        """Send one request and decode its answer; raise ApiError for a status >= 400."""
        status, headers, raw = self._send(method, url, data, timeout)
        if status >= 400:
            raise _error(status, headers, raw)
        try:
            return Answer(status, headers, json.loads(raw) if raw.strip() else None)
        except ValueError:
            raise InvalidAnswer(f"{method} {url}: {status} with a body that is not JSON") from None

    def _send(
        self, method: str, url: str, data: bytes | None, timeout: float
    ) -> tuple[int, Message, bytes]:
        """The network: one HTTP exchange, answering (status, headers, body bytes)."""
        headers = {"Accept": "application/json", "User-Agent": "task-scheduler-client"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return response.status, response.headers, response.read()
            except urllib.error.HTTPError as exc:
                try:
                    return exc.code, exc.headers, exc.read()
                finally:
                    exc.close()
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            reason = getattr(exc, "reason", None) or exc
            raise ConnectionFailed(f"{method} {url}: {reason}") from exc


def _error(status: int, headers: Message, raw: bytes) -> ApiError:
    """Build the ApiError subclass of `status` from an error answer."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message, code = body["error"], str(body.get("code") or "http_error")
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
    else:
        text = " ".join(raw.decode("utf-8", "replace").split())
        message, code, details = text[:200] or f"HTTP {status}", "http_error", {}
    retry_after = parse_retry_after(headers.get("Retry-After"))
    return ERRORS.get(status, ApiError)(status, code, message, details, retry_after)
