"""One attempt: call the handler with its context and turn what happens into an outcome."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from .handlers import HandlerFailed, Registry, TaskContext
from .models import Status
from .store import Claim, Outcome

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 64 * 1024
MAX_ERROR_CHARS = 1000
# Progress is written at most this often per attempt (and always at 100).
PROGRESS_EVERY_S = 0.2


@dataclass
class Running:
    """An attempt this instance is executing, and why it was asked to stop, if it was."""

    claim: Claim
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[None] | None = None
    # Monotonic time at which the attempt times out, or None.
    deadline: float | None = None
    stop_reason: str | None = None
    # Set when the deadline struck and the outcome was recorded then, not at the return.
    cut_off: bool = False
    # Monotonic time at which the attempt was dispatched.
    started: float = field(default_factory=time.monotonic)

    def stop(self, reason: str) -> None:
        """Ask the handler to stop: "cancel" by a user, "timeout", or "shutdown"."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel.set()


def call_handler(registry: Registry, running: Running, report: Callable[[int], None]) -> Outcome:
    """Run the attempt's handler and return its outcome; never raise."""
    claim = running.claim
    payload = claim.payload if isinstance(claim.payload, dict) else {}
    ctx = TaskContext(
        claim.id,
        claim.type,
        claim.duration_ms,
        payload,
        claim.attempt,
        running.cancel,
        progress=_throttled(report),
    )
    try:
        result = registry.resolve(claim.type)(ctx)
    except Exception as exc:  # a handler's bug must fail its task, not the scheduler
        if running.stop_reason == "cancel":
            return Outcome(
                Status.CANCELLED, error="Cancelled by a user while running.", error_code="cancelled"
            )
        if not isinstance(exc, HandlerFailed):
            log.exception("handler for task %s raised", claim.id)
        message = str(exc) if isinstance(exc, HandlerFailed) else _describe(exc)
        return Outcome(Status.FAILED, error=message[:MAX_ERROR_CHARS], error_code="handler_error")
    return _checked_result(result)


def _describe(exc: Exception) -> str:
    return f"The handler raised {type(exc).__name__}: {exc}"


def _checked_result(result: object) -> Outcome:
    try:
        size = len(json.dumps(result).encode())
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
        value = max(0, min(100, int(percent)))
        now = time.monotonic()
        if value == last[0] or (value < 100 and now - last[1] < PROGRESS_EVERY_S):
            return
        last[:] = [value, now]
        report(value)

    return progress
