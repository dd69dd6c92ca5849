"""API_TOKEN: a bearer token in front of the API, the dashboard's data, and optionally ops.

The check runs before the view, so an unauthenticated request is answered 401 before its
body is read: a large body gets 401, not 413. Every refusal reads the same, whatever was
sent (nothing, a wrong token, another scheme). The token itself is never logged or echoed.
"""

from __future__ import annotations

from flask import Flask, request

from app.errors import Unauthorized
from app.tokens import MESSAGE, carries, digest

# The data routes of the dashboard; its HTML pages and static files stay open.
DASHBOARD_DATA = "/dashboard/"
OPS_ROUTES = frozenset({"/health", "/metrics"})
# Under /api but open with a token set: they describe the API, they expose no data. URL
# rules, so that every file of the reference page (/api/docs/<path:filename>) is open too.
PUBLIC_API = frozenset({"/api/openapi.json", "/api/docs", "/api/docs/<path:filename>"})


def require_token(app: Flask, token: str, ops_routes: bool) -> None:
    """Refuse guarded requests that do not carry `Authorization: Bearer <token>`."""
    expected = digest(token.encode())

    def guarded(path: str) -> bool:
        rule = request.url_rule
        if path in PUBLIC_API or (rule is not None and rule.rule in PUBLIC_API):
            return False
        if path == "/api" or path.startswith(("/api/", DASHBOARD_DATA)):
            return True
        if request.blueprint == "tasks":
            return True
        return ops_routes and path in OPS_ROUTES

    @app.before_request
    def _authenticate() -> None:
        if not guarded(request.path):
            return
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # A browser's CORS pre-flight never carries credentials; the real request will.
            return
        if not _carries(expected):
            raise Unauthorized(MESSAGE)


def may_read(token: str) -> bool:
    """Tell whether this request may see data: no token is set, or it carries the token."""
    return not token or _carries(digest(token.encode()))


def _carries(expected: bytes) -> bool:
    return carries(request.headers.get("Authorization", ""), expected)
