"""Error handlers: every failure, ours or Werkzeug's, answers in the one JSON shape."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound

from app import parts
from app.errors import ApiError, DatabaseUnusable, error_body
from app.storage import dbfaults
from app.storage.health import schema_failure

# Named as before the package layout, so that operators' log filters keep working.
log = logging.getLogger("app.errors")

# Werkzeug's own errors (routing, size limits) mapped onto our codes.
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def protocol_error(status: int, reason: str, message: str) -> bytes:
    """Return the whole HTTP answer to a request the server could not read far enough to
    hand to the app (a request line or headers too long, a malformed request), in the
    one JSON shape: gunicorn would answer it with an HTML page of its own."""
    if status == 414:
        text = f"The request line is too long for the server ({message}); shorten the URL."
    elif status == 431:
        text = f"The request's headers are too large for the server ({message})."
    elif status == 400:
        text = f"The server could not read the request: {message}."
    else:
        text = f"{reason}: {message}." if message else f"{reason}."
    code = "bad_request" if status == 400 else "internal_error" if status == 500 else "http_error"
    body = json.dumps(error_body(code, text, None)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    """Build the JSON error body every failure uses."""
    response = jsonify(error_body(code, message, details))
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
        known = dbfaults.database_error(exc)
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
        unusable = _schema_problem(exc)
        if unusable is not None:
            log.warning(
                "%s %s answered 503 database_unusable: %s",
                request.method,
                request.path[:100],
                unusable,
            )
            message = f"Nothing was changed: {unusable}."
            return handle_api_error(DatabaseUnusable(message, {"reason": "schema"}))
        log.exception("unhandled error")
        return error_response(500, "internal_error", "The server failed to handle the request.")


def _schema_problem(exc: Exception) -> str | None:
    try:
        return schema_failure(exc, parts.engine())
    except Exception:  # the look itself failed: the error stays what it was
        return None


# Routes a newcomer guesses, and the route meant.
_NEAR_MISSES = {
    "/api": "/api/tasks",
    "/api/task": "/api/tasks",
    "/tasks": "/api/tasks",
    "/api/health": "/health",
    "/healthz": "/health",
    "/api/metrics": "/metrics",
    "/dashboard": "/ (the dashboard)",
    "/docs": "/api/docs",
    "/openapi.json": "/api/openapi.json",
    "/api/batch": "/api/tasks/batch",
    "/api/events/stream": "/api/events",
}


def _http_message(status: int, exc: HTTPException) -> str:
    if status == 404:
        bare = request.path.rstrip("/")
        if bare != request.path and bare and _is_route(bare):
            return f"No such route: the routes end without a slash; use {bare[:200]}."
        meant = _NEAR_MISSES.get(bare.lower())
        if meant is None and bare.lower().startswith("/api/task/"):
            plural = "/api/tasks/" + bare[len("/api/task/") :]
            meant = plural[:200] if _is_route(plural) else None
        if meant is not None:
            return f"No such route; did you mean {meant}?"
        return "No such route; the API lives under /api/tasks, the dashboard at /."
    if status == 405:
        allowed = sorted(m for m in getattr(exc, "valid_methods", None) or () if m != "OPTIONS")
        return f"This route does not accept {request.method[:16]}; it accepts " + (
            ", ".join(allowed) + "." if allowed else "no other method."
        )
    if status == 413:
        return "The request body is too large."
    return exc.description or exc.name


def _is_route(path: str) -> bool:
    """Tell whether `path` is a route of the app, for any method."""
    try:
        current_app.url_map.bind("localhost").match(path, method=request.method)
    except NotFound:
        return False
    except HTTPException:  # another method's route, or a redirect to one
        return True
    return True
