"""gunicorn's error and access logs as JSON lines, for LOG_FORMAT=json (gunicorn.conf.py)."""

from __future__ import annotations

import datetime
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
