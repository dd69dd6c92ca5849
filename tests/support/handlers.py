"""In-process handlers a test controls from its own thread: `Gate` and `Switch`."""

from __future__ import annotations

import threading
from typing import Any

from app.handlers import HandlerFailed, TaskContext


class Gate:
    """A handler that blocks until released (ignoring cancel unless told to honour it)."""

    def __init__(self, honour_cancel: bool = False) -> None:
        self.release = threading.Event()
        self.honour_cancel = honour_cancel
        self.started: list[str] = []

    def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        self.started.append(ctx.id)
        ctx.progress(50)
        while not self.release.wait(0.01):
            if self.honour_cancel and ctx.cancel.is_set():
                raise HandlerFailed("stopped on request")
        return {"released": ctx.id}


class Switch:
    """A handler that fails until `works` is set."""

    def __init__(self) -> None:
        self.works = False
        self.calls = 0

    def __call__(self, ctx: TaskContext) -> str:
        self.calls += 1
        if not self.works:
            raise HandlerFailed("not yet")
        return "ok"
