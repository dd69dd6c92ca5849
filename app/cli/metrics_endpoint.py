"""The metrics endpoint of `flask scheduler run`: GET /metrics on METRICS_HOST:METRICS_PORT.

The scheduler process serves no API, so without this its execution metrics would be
visible nowhere. A small threaded WSGI server answers `/metrics` like the API's route (the
same text, the same token when AUTH_OPS_ROUTES is set) and every other request with the
API's JSON error shape.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from app.errors import error_body
from app.runtime.metrics import CONTENT_TYPE, Metrics
from app.tokens import MESSAGE, carries, digest

log = logging.getLogger("app.metrics")

PATH = "/metrics"
METHODS = ("GET", "HEAD")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a line per scrape would drown the task log."""


def metrics_app(metrics: Metrics, token: str = "") -> WSGIApplication:
    """Return a WSGI app serving `metrics` at /metrics; with `token`, behind it."""
    expected = digest(token.encode())

    def error(
        start: StartResponse, status: str, code: str, message: str, *headers: tuple[str, str]
    ) -> list[bytes]:
        body = json.dumps(error_body(code, message, None)).encode()
        start(status, [("Content-Type", "application/json"), *headers])
        return [body]

    def app(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return error(start, "404 Not Found", "not_found", f"The only route here is {PATH}.")
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            message = f"{PATH} does not accept {method[:16]}; it accepts GET."
            allow = ("Allow", ", ".join(METHODS))
            return error(start, "405 Method Not Allowed", "method_not_allowed", message, allow)
        if token and not carries(environ.get("HTTP_AUTHORIZATION", ""), expected):
            challenge = ("WWW-Authenticate", 'Bearer realm="task-scheduler"')
            return error(start, "401 Unauthorized", "unauthorized", MESSAGE, challenge)
        try:
            body = metrics.exposition()
        except Exception:
            log.exception("could not render the metrics")
            message = "The server failed to handle the request."
            return error(start, "500 Internal Server Error", "internal_error", message)
        start("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [b""] if method == "HEAD" else [body]

    return app


class MetricsEndpoint:
    """The endpoint's server, serving on a thread of its own until closed."""

    def __init__(self, metrics: Metrics, host: str, port: int, token: str = "") -> None:
        """Bind `host`:`port` (OSError if it cannot) and start serving."""
        self._server = make_server(
            host,
            port,
            metrics_app(metrics, token),
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
