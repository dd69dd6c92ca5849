"""Domain errors and the one JSON error shape; the only module that knows HTTP codes."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from app.storage import dbfaults

log = logging.getLogger(__name__)

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


class OutcomeUnknown(TryAgainLater):
    code = "outcome_unknown"


class StorageFull(ApiError):
    status = 507
    code = "storage_full"


def database_error(exc: BaseException) -> ApiError | None:
    """Return the answer to an infrastructure fault, or None for any other error (a bug)."""
    fault = dbfaults.classify(exc)
    if fault is None:
        return None
    details = {"reason": fault.reason}
    if fault.kind is dbfaults.Kind.STORAGE_FULL:
        return StorageFull(
            f"The write was refused: {fault.problem}. Nothing was stored; repeating it "
            "fails until space is freed.",
            details,
        )
    if fault.kind is dbfaults.Kind.OUTCOME_UNKNOWN:
        return OutcomeUnknown(
            "The connection to the database failed during the commit: this may or may not "
            "have been stored. Repeating the request is safe; the same submission with the "
            "same id is a replay if stored.",
            details,
        )
    return DatabaseUnavailable(
        f"The database is unavailable: {fault.problem}. Nothing was changed; try again shortly.",
        details,
    )


# Werkzeug's own errors (routing, size limits) mapped onto our codes.
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


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


def _error_body(code: str, message: str, details: dict[str, Any] | None) -> dict[str, Any]:
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


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    """Build the JSON error body every failure uses."""
    response = jsonify(_error_body(code, message, details))
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Make every error, ours or Werkzeug's, answer in the one JSON shape."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers())
        return response

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = _http_message(status, exc)
        response = error_response(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        known = database_error(exc)
        if known is not None:
            # Not a bug: one line, no traceback, however many requests the outage meets.
            log.warning(
                "%s %s answered %d %s: %s",
                request.method,
                request.path[:100],
                known.status,
                known.code,
                dbfaults.describe(exc),
            )
            return handle_api_error(known)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "The server failed to handle the request.")


def _http_message(status: int, exc: HTTPException) -> str:
    if status == 404:
        return "No such route; the API lives under /api/tasks."
    if status == 405:
        allowed = sorted(m for m in getattr(exc, "valid_methods", None) or () if m != "OPTIONS")
        return f"This route does not accept {request.method[:16]}; it accepts " + (
            ", ".join(allowed) + "." if allowed else "no other method."
        )
    if status == 413:
        return "The request body is too large."
    return exc.description or exc.name
