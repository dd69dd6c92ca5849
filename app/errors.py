"""Domain errors, each with its HTTP status and code, and the one JSON error body."""

from __future__ import annotations

import json
from typing import Any

# An error body stays small and never echoes large input back.
MAX_DETAIL_TEXT = 200
MAX_DETAIL_ITEMS = 20
MAX_ERROR_BYTES = 2048
# Tighter limits, tried in turn while a body is still too big (long ids, non-ASCII escapes).
CLIP_LEVELS = ((MAX_DETAIL_TEXT, MAX_DETAIL_ITEMS), (64, 5), (16, 1))


class ApiError(Exception):
    """An error a client can act on: a code, a sentence, and optional details."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        """Return the headers the answer carries besides the body."""
        return {}


class InvalidJson(ApiError):
    code = "invalid_json"


class ValidationFailed(ApiError):
    code = "validation_error"


class InvalidParameter(ApiError):
    code = "invalid_parameter"


class UnknownDependency(ApiError):
    code = "unknown_dependency"


class DependencyCycle(ApiError):
    code = "dependency_cycle"


class UnknownTaskType(ApiError):
    code = "unknown_task_type"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        """Name the scheme a client must use (RFC 6750)."""
        return {"WWW-Authenticate": 'Bearer realm="task-scheduler"'}


class NotFound(ApiError):
    status = 404
    code = "not_found"


class DuplicateId(ApiError):
    status = 409
    code = "duplicate_id"


class InvalidState(ApiError):
    status = 409
    code = "invalid_state"


class TooManyQueues(ApiError):
    status = 409
    code = "too_many_queues"


class BodyTooLarge(ApiError):
    status = 413
    code = "body_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class QueueFull(ApiError):
    status = 429
    code = "queue_full"

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, retry_after_s: int = 1
    ) -> None:
        super().__init__(message, details)
        self.retry_after_s = max(1, retry_after_s)

    def headers(self) -> dict[str, str]:
        """Say how many seconds to wait before submitting again."""
        return {"Retry-After": str(self.retry_after_s)}


# Seconds a client should wait before repeating a request the database could not serve:
# about what a PostgreSQL restart takes.
DATABASE_RETRY_AFTER_S = 1


class TryAgainLater(ApiError):
    """The database could not serve the request now; a later try may succeed."""

    status = 503

    def headers(self) -> dict[str, str]:
        """Say how many seconds to wait before repeating the request."""
        return {"Retry-After": str(DATABASE_RETRY_AFTER_S)}


class DatabaseUnavailable(TryAgainLater):
    code = "database_unavailable"


class DatabaseUnusable(ApiError):
    """This version cannot run on the database's schema (never migrated, or migrated by an
    older version): nothing changes that until an operator runs `flask db upgrade`, so no
    Retry-After is given."""

    status = 503
    code = "database_unusable"


class OutcomeUnknown(TryAgainLater):
    code = "outcome_unknown"


class TooManyWaiting(TryAgainLater):
    """This worker holds as many waiting requests as it may (MAX_WAITING_REQUESTS)."""

    code = "too_many_waiting"


class TooManyStreams(TryAgainLater):
    """This worker holds as many event streams as it may (MAX_EVENT_STREAMS)."""

    code = "too_many_streams"


class StorageFull(ApiError):
    status = 507
    code = "storage_full"


def _clip(value: Any, text: int, items: int, depth: int = 0) -> Any:
    """Return `value` with long strings cut and long collections shortened."""
    if isinstance(value, str):
        return value if len(value) <= text else value[:text] + "..."
    if isinstance(value, dict) and depth < 3:
        pairs = list(value.items())[:items]
        return {_clip(str(k), text, items): _clip(v, text, items, depth + 1) for k, v in pairs}
    if isinstance(value, (list, tuple)) and depth < 3:
        return [_clip(v, text, items, depth + 1) for v in value[:items]]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _clip(str(value), text, items)


def error_body(code: str, message: str, details: dict[str, Any] | None) -> dict[str, Any]:
    """Return the error body, clipped harder until it stays under MAX_ERROR_BYTES."""
    body: dict[str, Any] = {}
    for text, items in CLIP_LEVELS:
        body = {"error": _clip(message, text, items), "code": code}
        if details:
            body["details"] = _clip(details, text, items)
        # Measured as indented ASCII, the largest form jsonify writes.
        if len(json.dumps(body, indent=2)) < MAX_ERROR_BYTES:
            break
    return body
