"""The endpoint of `flask scheduler run`: GET /metrics and /health on
METRICS_HOST:METRICS_PORT.

The scheduler process serves no API, so without this its execution metrics would be
visible nowhere, and an orchestrator could not ask whether it does its job. A small
threaded WSGI server answers `/metrics` and `/health` like the API's routes (the same
bodies and statuses, the same token when AUTH_OPS_ROUTES is set) and every other request
with the API's JSON error shape.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from app.errors import error_body
from app.runtime.metrics import CONTENT_TYPE, Metrics
from app.tokens import MESSAGE, carries, digest

log = logging.getLogger("app.metrics")

PATH = "/metrics"
HEALTH = "/health"
JSON = "application/json"
METHODS = ("GET", "HEAD")
# The health report and whether it is healthy (services.health.report, bound).
Health = Callable[[], tuple[dict[str, Any], bool]]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a line per scrape would drown the task log."""


def metrics_app(metrics: Metrics, token: str = "", health: Health | None = None) -> WSGIApplication:
    """Return a WSGI app serving `metrics` at /metrics and `health` at /health; with
    `token`, behind it."""
    expected = digest(token.encode())

    def error(
        start: StartResponse, status: str, code: str, message: str, *headers: tuple[str, str]
    ) -> list[bytes]:
        body = json.dumps(error_body(code, message, None), separators=(",", ":")).encode()
        start(status, [("Content-Type", JSON), *headers])
        return [body]

    routes = (PATH, HEALTH) if health is not None else (PATH,)

    def app(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path not in routes:
            message = f"The only route{'s' if len(routes) > 1 else ''} here: {', '.join(routes)}."
            return error(start, "404 Not Found", "not_found", message)
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            message = f"{path} does not accept {method[:16]}; it accepts GET."
            allow = ("Allow", ", ".join(METHODS))
            return error(start, "405 Method Not Allowed", "method_not_allowed", message, allow)
        if token and not carries(environ.get("HTTP_AUTHORIZATION", ""), expected):
            challenge = ("WWW-Authenticate", 'Bearer realm="task-scheduler"')
            return error(start, "401 Unauthorized", "unauthorized", MESSAGE, challenge)
        try:
            if path == HEALTH and health is not None:
                report, ok = health()
                body = json.dumps(report, default=str, separators=(",", ":")).encode()
                status, content_type = ("200 OK" if ok else "503 Service Unavailable"), JSON
            else:
                body, status, content_type = metrics.exposition(), "200 OK", CONTENT_TYPE
        except Exception:
            log.exception("could not answer %s", path)
            message = "The server failed to handle the request."
            return error(start, "500 Internal Server Error", "internal_error", message)
        start(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [b""] if method == "HEAD" else [body]

    return app


class MetricsEndpoint:
    """The endpoint's server, serving on a thread of its own until closed."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        token: str = "",
        health: Health | None = None,
    ) -> None:
        """Bind `host`:`port` (OSError if it cannot) and start serving."""
        self._server = make_server(
            host,
            port,
            metrics_app(metrics, token, health),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self.url = f"http://{host}:{self._server.server_port}{PATH}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-endpoint", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
