"""A small keep-alive JSON client for 127.0.0.1, on http.client."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit


class Client:
    """One persistent HTTP/1.1 connection to the server under test."""

    def __init__(self, base: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base)
        if parts.hostname != "127.0.0.1":
            raise ValueError("the benchmarks only load 127.0.0.1")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request and return (status, decoded JSON body or None)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()  # the server closed an idle keep-alive connection
                if attempt == 2:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, json.loads(raw) if raw else None
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any) -> Any:
        """POST JSON and return the body; raise unless the answer is 2xx."""
        status, answer = self.request("POST", path, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"POST {path} answered {status}: {str(answer)[:300]}")
        return answer

    def get(self, path: str) -> Any:
        """GET and return the body; raise unless the answer is 2xx."""
        status, answer = self.request("GET", path)
        if not 200 <= status < 300:
            raise RuntimeError(f"GET {path} answered {status}: {str(answer)[:300]}")
        return answer

    def timed_get(self, path: str) -> float:
        """GET `path` and return how long it took, in milliseconds."""
        started = time.perf_counter()
        self.get(path)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        """Drop the connection; the next request opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn
