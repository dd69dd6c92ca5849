"""One attempt: call the handler with its context and turn what happens into an outcome."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from app.handlers import (
    HandlerFailed,
    Registry,
    TaskContext,
    ignore_progress,
    no_dependency_results,
)
from app.jsonbody import json_size
from app.statuses import Status
from app.storage.store import Claim, Outcome

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.attempt")

MAX_RESULT_BYTES = 64 * 1024
MAX_ERROR_CHARS = 1000
# A handler's traceback is kept in its attempt's history up to this many characters: the
# first line and the innermost frames, where it raised.
MAX_TRACEBACK_CHARS = 8000
# Progress is written at most this often per attempt (and always at 100).
PROGRESS_EVERY_S = 0.2


# Makes each attempt's cancel event once, whichever thread asks for it first.
_cancel_guard = threading.Lock()


@dataclass(eq=False, slots=True)
class Running:
    """An attempt this process holds a thread for, from its claim until it is settled.

    It occupies one of the instance's slots until both its thread has returned and its
    outcome is settled (written, refused by the fence, or known to be someone else's):
    only then can the slot's thread start another attempt at once.

    The scheduler's loop makes one for every task it starts, so it is kept cheap: slots,
    and the cancel event made when first asked for (on the attempt's own thread, as its
    handler's context is made), not by the loop.
    """

    claim: Claim
    # Clock time at which the attempt was dispatched, then at which its thread started.
    started: float = field(default_factory=time.monotonic)
    # Clock time at which the attempt times out, or None; set when its thread starts.
    deadline: float | None = None
    stop_reason: str | None = None
    # The outcome waiting to be written by the next pass.
    outcome: Outcome | None = None
    # Decided before the thread returned (its timeout struck, or its row was lost):
    # whatever the handler returns afterwards is discarded.
    cut_off: bool = False
    returned: bool = False
    settled: bool = False
    _cancel: threading.Event | None = field(default=None, repr=False)

    @property
    def cancel(self) -> threading.Event:
        """The event the handler watches: set when the attempt is asked to stop."""
        event = self._cancel
        if event is None:
            with _cancel_guard:
                if self._cancel is None:
                    self._cancel = threading.Event()
                event = self._cancel
        return event

    @property
    def key(self) -> tuple[str, int]:
        """The task id and attempt number: what identifies this attempt."""
        return self.claim.key

    @property
    def holds_slot(self) -> bool:
        """Tell whether the attempt still occupies a slot."""
        return not (self.returned and self.settled)

    def stop(self, reason: str) -> None:
        """Ask the handler to stop: "cancel" by a user, "timeout", "shutdown" or "lost"."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()


class Job(Protocol):
    """What an executor runs on one thread: begin, the handler, end."""

    def begin(self) -> None:
        """Note that the thread started, before the handler is called."""

    def run(self) -> Outcome:
        """Call the handler and return its outcome."""

    def end(self, outcome: Outcome | None) -> None:
        """Note that the thread is done; `outcome` is None if the handler never returned."""


class Executor(Protocol):
    """Runs jobs, each on a thread of its own; the scheduler never starts more than it has."""

    def start(self, job: Job) -> None:
        """Start `job` on a free thread."""

    def shutdown(self) -> None:
        """Stop accepting jobs; running ones go on until they return."""


class ThreadExecutor:
    """A pool of `workers` threads, each running one attempt after another.

    Each of the `ThreadPoolExecutor`'s threads runs a loop that takes the attempts handed
    to it from one queue: starting an attempt is one put, with no `Future`, work item or
    thread accounting of the pool's per attempt (a scheduler pass starts up to one per
    slot, on the loop every slot waits for).
    """

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="task")
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._workers = workers
        # Known before its threads start: stopped at exit even if they do not all start.
        _running_pools.add(self)
        try:
            for _ in range(workers):
                self._pool.submit(_slot, self._jobs)
        except BaseException:  # a thread that could not start: those that did must stop
            self.shutdown()
            raise

    def start(self, job: Job) -> None:
        """Start `job` on one of the pool's threads."""
        self._jobs.put(job)

    def shutdown(self) -> None:
        """Drop the jobs not started yet and stop the pool without waiting for its threads:
        each ends as its current job returns."""
        _running_pools.discard(self)
        self._release()
        self._pool.shutdown(wait=False)

    def _release(self) -> None:
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in range(self._workers):
            self._jobs.put(None)


def _slot(jobs: queue.SimpleQueue[Job | None]) -> None:
    """Run the jobs of one slot until told to stop (None)."""
    while (job := jobs.get()) is not None:
        try:
            _work(job)
        except BaseException:  # the slot must outlive whatever its job raises
            log.exception("an attempt's thread ended its job with an exception")
        del job


def _work(job: Job) -> None:
    job.begin()
    outcome = None
    try:
        outcome = job.run()
    finally:
        job.end(outcome)


# The pools not shut down, whose threads wait for jobs (held even when nothing else holds
# the pool: its threads live on). At the interpreter's exit their threads are told to stop
# before the `ThreadPoolExecutor`'s exit joins them; one waiting for a job would never end.
_running_pools: set[ThreadExecutor] = set()


def _stop_every_pool() -> None:
    for pool in list(_running_pools):
        pool._release()


threading._register_atexit(_stop_every_pool)  # type: ignore[attr-defined]


def call_handler(
    registry: Registry,
    running: Running,
    report: Callable[[int], None],
    read_dependency_results: Callable[[], dict[str, Any]] | None = None,
) -> Outcome:
    """Run the attempt's handler and return its outcome; never raise.

    A completed outcome carries the tasks the handler added, to be created with it.
    """
    claim = running.claim
    ctx = _AttemptContext.of(running, report, read_dependency_results)
    try:
        result = registry.resolve(claim.type)(ctx)
    # A handler's bug must fail its task, not the scheduler; so must its sys.exit().
    except (Exception, SystemExit) as exc:
        if running.stop_reason == "cancel":
            return Outcome(
                Status.CANCELLED, error="Cancelled by a user while running.", error_code="cancelled"
            )
        if not isinstance(exc, HandlerFailed):
            log.exception("handler for task %s raised", claim.id)
        message = str(exc) if isinstance(exc, HandlerFailed) else _describe(exc)
        return Outcome(
            Status.FAILED,
            error=message[:MAX_ERROR_CHARS],
            error_code="handler_error",
            traceback=_traceback(exc),
        )
    outcome = _checked_result(result)
    if ctx.added and outcome.status is Status.COMPLETED:
        return replace(outcome, children=tuple(ctx.added))
    return outcome


class _AttemptContext(TaskContext):
    """A handler's context as the scheduler makes it for an attempt (`of`): its cancel
    event is the attempt's, and its progress hook is made, like that event, only when the
    handler first asks for it (most never do, and a pass starts one attempt per free
    slot). Otherwise a TaskContext: made from its fields (`dataclasses.replace`), or
    given another event or hook, it keeps those."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._running: Running | None = None
        self._cancel: threading.Event | None = None
        self._report: Callable[[int], None] | None = None
        self._progress: Callable[[int], None] | None = None
        super().__init__(*args, **kwargs)

    @classmethod
    def of(
        cls,
        running: Running,
        report: Callable[[int], None],
        read_dependency_results: Callable[[], dict[str, Any]] | None,
    ) -> _AttemptContext:
        """Return the context of `running`'s attempt, its fields set directly."""
        ctx = cls.__new__(cls)
        claim = running.claim
        ctx.id = claim.id
        ctx.type = claim.type
        ctx.duration_ms = claim.duration_ms
        ctx.payload = claim.payload if isinstance(claim.payload, dict) else {}
        ctx.attempt = claim.attempt
        ctx.read_dependency_results = read_dependency_results or no_dependency_results
        ctx.added = []
        ctx._running = running
        ctx._cancel = None
        ctx._report = report
        ctx._progress = None
        return ctx

    def __repr__(self) -> str:
        # Shown as what handlers are told they get (a handler may print or log it).
        shown = TaskContext.__repr__(self)  # "..." when the context holds itself
        mine = type(self).__qualname__
        return "TaskContext" + shown[len(mine) :] if shown.startswith(mine) else shown

    @property
    def cancel(self) -> threading.Event:
        if self._running is not None:
            return self._running.cancel
        if self._cancel is None:
            self._cancel = threading.Event()
        return self._cancel

    @cancel.setter
    def cancel(self, event: threading.Event) -> None:
        # As on a TaskContext: the attempt's stop no longer reaches the handler's event.
        self._running, self._cancel = None, event

    @property
    def progress(self) -> Callable[[int], None]:
        if self._progress is None:
            report = self._report
            self._progress = ignore_progress if report is None else _throttled(report)
        return self._progress

    @progress.setter
    def progress(self, hook: Callable[[int], None]) -> None:
        self._progress = hook


def _traceback(exc: BaseException) -> str:
    """Return the traceback of what a handler raised, cut to MAX_TRACEBACK_CHARS: each
    part (a frame, an exception's message) to MAX_ERROR_CHARS, so that a long message
    leaves room for the frames, then the first line and the innermost parts."""
    text = "".join(
        _shortened(part) for part in traceback.TracebackException.from_exception(exc).format()
    )
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    head = text.split("\n", 1)[0]
    cut = "\n  ... (earlier frames left out)\n"
    return head + cut + text[-(MAX_TRACEBACK_CHARS - len(head) - len(cut)) :]


def _shortened(part: str) -> str:
    if len(part) <= MAX_ERROR_CHARS:
        return part
    return f"{part[:MAX_ERROR_CHARS]}... ({len(part) - MAX_ERROR_CHARS:,} characters left out)\n"


def _describe(exc: BaseException) -> str:
    return f"The handler raised {type(exc).__name__}: {exc}"


# A handler that returned nothing, the usual case: one outcome shared by every attempt.
_RETURNED_NOTHING = Outcome(Status.COMPLETED)


def _checked_result(result: object) -> Outcome:
    if result is None:
        return _RETURNED_NOTHING
    try:
        # No NaN or Infinity: PostgreSQL refuses them as JSON, and a client cannot read them.
        size = json_size(result)
    except (TypeError, ValueError):
        return Outcome(
            Status.FAILED,
            error="The handler returned a value that is not JSON.",
            error_code="handler_error",
        )
    if size > MAX_RESULT_BYTES:
        message = f"The handler's result is {size} bytes; the limit is {MAX_RESULT_BYTES}."
        return Outcome(Status.FAILED, error=message, error_code="handler_error")
    return Outcome(Status.COMPLETED, result=result)


def _throttled(report: Callable[[int], None]) -> Callable[[int], None]:
    """Wrap `report` so it gets whole percentages 0..100, changed, and not too often."""
    last: list[float] = [-1.0, 0.0]  # value, time

    def progress(percent: int) -> None:
        try:
            value = max(0, min(100, int(percent)))
        except (TypeError, ValueError, OverflowError):
            return  # not a number (None, NaN): a report, never worth failing the work for
        now = time.monotonic()
        if value == last[0] or (value < 100 and now - last[1] < PROGRESS_EVERY_S):
            return
        last[:] = [value, now]
        report(value)

    return progress
