"""gunicorn's error and access logs as JSON lines, for LOG_FORMAT=json (gunicorn.conf.py)."""

from __future__ import annotations

import datetime
import logging
import traceback
from typing import Any

from gunicorn.glogging import Logger

from app.logs import JsonFormatter


class JsonLogger(Logger):
    """gunicorn's logger, writing one JSON object per line on both of its logs.

    An access line carries `remote_addr`, `method`, `path`, `query`, `status`, `bytes`,
    `duration_ms` and `user_agent`: never a request header besides the user agent, so
    neither an Authorization header nor the user name of Basic authentication.
    """

    def setup(self, cfg: Any) -> None:
        """Set gunicorn's handlers up, then give each the JSON formatter."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Log one answered request as a JSON line."""
        if not self.cfg.accesslog:
            return
        fields = access_fields(resp, environ, request_time)
        try:
            message = f"{fields['method']} {fields['path']} {fields['status']}"
            self.access_log.info(message, extra=fields)
        except Exception:
            self.error(traceback.format_exc())


def access_fields(
    resp: Any, environ: dict[str, Any], request_time: datetime.timedelta
) -> dict[str, Any]:
    """Return the fields of one access line."""
    status = resp.status
    if isinstance(status, str):
        status = status.split(None, 1)[0]
    return {
        "remote_addr": environ.get("REMOTE_ADDR", "-"),
        "method": environ.get("REQUEST_METHOD", "-"),
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "status": int(status),
        "bytes": getattr(resp, "sent", None),
        "duration_ms": round(request_time.total_seconds() * 1000, 3),
        "user_agent": environ.get("HTTP_USER_AGENT", ""),
    }


# How gunicorn's gthread worker logs an error of a connection's socket, with its traceback.
SOCKET_ERROR = "Socket error processing request."


class TimedOutClients(logging.Filter):
    """Turn gunicorn's error and traceback for a connection that timed out into one line.

    A client's connection times out after `timeout_s` in which it sent nothing in the
    middle of a request (CLIENT_TIMEOUT_S, gunicorn.conf.py), and an event stream's after
    `stream_timeout_s` of a write waiting: when a client stops sending its request or
    reading its stream, the worker closes the connection, as it should, and nothing is
    wrong with the server. gunicorn logs it as an error with a traceback all the same; it
    becomes one warning line.
    """

    def __init__(self, timeout_s: float, stream_timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a timed-out connection's record; let every other record through."""
        failure = record.exc_info[1] if record.exc_info else None
        if record.msg == SOCKET_ERROR and isinstance(failure, TimeoutError):
            record.msg = (
                "a client sent nothing for %g s in the middle of a request, or read "
                "nothing for %g s of an event stream; its connection was closed"
            )
            record.args = (self.timeout_s, self.stream_timeout_s)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True
