"""The Huey peer: the same no-op work, and completion timing from inside its consumer.

The consumer (`huey_consumer bench.huey_app.huey`) builds its Huey from BENCH_HUEY_* variables;
the producer builds an identical one with `build()`. The consumer's signal handlers note
the first start and the last finish of every task but the warm-up one, and write them to
BENCH_HUEY_DONE once BENCH_HUEY_EXPECT tasks have completed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey, signals

# A pipeline nests the rest of the chain in each message; 1,000 levels exceed the default.
sys.setrecursionlimit(50_000)

# The length of a task of real work, as the `simulate` tasks of `--only work` sleep.
WORK_S = 0.001


@dataclass(frozen=True)
class HueyConfig:
    """Which storage, where, and what the consumer waits for."""

    backend: str  # "sqlite" or "redis"
    name: str
    path: str = ""  # the SQLite file
    expect: int = 0
    done: str = ""

    def env(self) -> dict[str, str]:
        """Return the BENCH_HUEY_* variables that describe this config."""
        return {
            "BENCH_HUEY_BACKEND": self.backend,
            "BENCH_HUEY_NAME": self.name,
            "BENCH_HUEY_PATH": self.path,
            "BENCH_HUEY_EXPECT": str(self.expect),
            "BENCH_HUEY_DONE": self.done,
        }


def noop() -> None:
    """Do nothing."""
    return None


def hop() -> None:
    """One link of a chain; the pipeline enqueues the next when it returns."""
    return None


def work() -> None:
    """A task with real work: 1 ms off the CPU, as our `simulate` type of 1 ms does."""
    time.sleep(WORK_S)


def warm() -> None:
    """The warm-up task, not counted."""
    return None


def build(config: HueyConfig) -> tuple[Huey, Any, Any, Any, Any]:
    """Return a Huey on the configured storage and its tasks (noop, hop, warm, work)."""
    if config.backend == "redis":
        huey: Huey = RedisHuey(config.name, host="127.0.0.1", port=6379)
    else:
        # fsync=True is synchronous=FULL: the durability our service runs with by default.
        huey = SqliteHuey(config.name, filename=config.path, fsync=True)
    return huey, huey.task()(noop), huey.task()(hop), huey.task()(warm), huey.task()(work)


class _Timing:
    """What the consumer's signal handlers record."""

    def __init__(self, config: HueyConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.count = 0
        self.first_start: float | None = None
        self.last_finish = 0.0

    def executing(self, signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        if task.name != "warm":
            now = time.time()
            with self.lock:
                if self.first_start is None:
                    self.first_start = now

    def complete(self, signal: str, task: Any, *args: Any, **kwargs: Any) -> None:
        now = time.time()
        if task.name == "warm":
            Path(self.config.done + ".warm").write_text("ok")
            return
        with self.lock:
            self.count += 1
            self.last_finish = max(self.last_finish, now)
            if self.count == self.config.expect:
                record = {"first_start": self.first_start, "last_finish": self.last_finish}
                Path(self.config.done).write_text(json.dumps(record))


def _consumer_huey() -> Huey:
    env = os.environ
    config = HueyConfig(
        backend=env["BENCH_HUEY_BACKEND"],
        name=env["BENCH_HUEY_NAME"],
        path=env.get("BENCH_HUEY_PATH", ""),
        expect=int(env["BENCH_HUEY_EXPECT"]),
        done=env["BENCH_HUEY_DONE"],
    )
    huey = build(config)[0]
    timing = _Timing(config)
    huey.signal(signals.SIGNAL_EXECUTING)(timing.executing)
    huey.signal(signals.SIGNAL_COMPLETE)(timing.complete)
    return huey


_HUEY: list[Huey] = []


def __getattr__(name: str) -> Any:
    # `huey_consumer bench.huey_app.huey` reads this attribute: build it only then.
    if name == "huey":
        if not _HUEY:
            _HUEY.append(_consumer_huey())
        return _HUEY[0]
    raise AttributeError(name)
