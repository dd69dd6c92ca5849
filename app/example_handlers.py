"""Example handlers doing real work; load them with `TASK_HANDLERS=app.example_handlers`.

How to write a handler module:

- Expose `register(registry)`; call `registry.register("type", handler)` for each task type.
- A handler takes a `TaskContext` and returns a JSON value of at most 64 KiB: the task's result.
- Validate `ctx.payload` yourself; raise `HandlerFailed("One sentence.")` for an expected
  failure: the sentence becomes the task's `error`. Any other exception also fails the attempt.
- Work in chunks: between chunks, stop when `ctx.cancel` is set (raise `HandlerFailed`) and
  report `ctx.progress(percent)`, 0 to 100; report 100 only when the work is done.
- Touch files only under `TASK_DATA_DIR`, through `data_path`, which refuses any path leading out.
  Write results atomically (a temporary file in the same folder, then `os.replace`): a task may
  run more than once. Never run commands, import names from a payload or reach the network.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO, Any

from app.config import ConfigError
from app.handlers import HandlerFailed, Registry, TaskContext

log = logging.getLogger(__name__)

MAX_BELOW = 10_000_000
SEGMENT = 1 << 17  # numbers sieved between two cancel checks
CHUNK = 1 << 20  # bytes read between two cancel checks
MAX_PATH = 1024
STOPPED = "The task was asked to stop before it finished."


def register(registry: Registry) -> None:
    """Register `primes`, and `checksum` and `word_count` when `TASK_DATA_DIR` is set."""
    registry.register("primes", primes)
    raw = os.environ.get("TASK_DATA_DIR", "").strip()
    if not raw:
        log.warning("TASK_DATA_DIR is not set: the checksum and word_count types are disabled")
        return
    root = Path(raw).resolve()
    if not root.is_dir():
        raise ConfigError(
            f"TASK_DATA_DIR must name an existing folder, got {raw!r}: "
            "create it, or leave TASK_DATA_DIR unset"
        )
    registry.register("checksum", partial(checksum, root=root))
    registry.register("word_count", partial(word_count, root=root))


def primes(ctx: TaskContext) -> dict[str, Any]:
    """Count the primes below `payload.below` with a segmented sieve."""
    _only(ctx.payload, required={"below"})
    below = ctx.payload["below"]
    if isinstance(below, bool) or not isinstance(below, int) or not 2 <= below <= MAX_BELOW:
        raise HandlerFailed(
            f"payload.below must be an integer from 2 to {MAX_BELOW}, got {_show(below)}."
        )
    base = _small_primes(math.isqrt(below - 1))
    report = _reporter(ctx, below)
    count, largest = 0, None
    for low in range(0, below, SEGMENT):
        _stop_if_cancelled(ctx)
        high = min(low + SEGMENT, below)
        segment = _sieve(low, high, base)
        count += segment.count(1)
        top = segment.rfind(1)
        if top >= 0:
            largest = low + top
        report(high)
    ctx.progress(100)
    return {"below": below, "count": count, "largest": largest}


def checksum(ctx: TaskContext, *, root: Path) -> dict[str, Any]:
    """Return the size and SHA-256 of the file at `payload.path`."""
    _only(ctx.payload, required={"path"})
    digest, size = hashlib.sha256(), 0
    with _open_input(root, ctx.payload, "path") as (fh, expected):
        for chunk in _chunks(ctx, fh, expected):
            digest.update(chunk)
            size += len(chunk)
    ctx.progress(100)
    return {"path": ctx.payload["path"], "bytes": size, "sha256": digest.hexdigest()}


def word_count(ctx: TaskContext, *, root: Path) -> dict[str, Any]:
    """Count the lines, words and characters of a UTF-8 file; write them to `payload.output`."""
    _only(ctx.payload, required={"path"}, optional={"output"})
    output = data_path(root, ctx.payload, "output") if "output" in ctx.payload else None
    if output is not None and output == data_path(root, ctx.payload, "path"):
        raise HandlerFailed("payload.output must not be the file it counts.")
    counts = _Counts()
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    with _open_input(root, ctx.payload, "path") as (fh, expected):
        try:
            for chunk in _chunks(ctx, fh, expected):
                counts.add(decoder.decode(chunk))
            counts.add(decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            shown = _show(ctx.payload["path"])
            raise HandlerFailed(f"payload.path {shown} is not UTF-8 text.") from None
    summary = {"path": ctx.payload["path"], **counts.summary()}
    if output is not None:
        _stop_if_cancelled(ctx)
        _write_json(output, summary)
        summary["output"] = ctx.payload["output"]
    ctx.progress(100)
    return summary


def _stop_if_cancelled(ctx: TaskContext) -> None:
    """Fail the attempt when the scheduler has asked the handler to stop."""
    if ctx.cancel.is_set():
        raise HandlerFailed(STOPPED)


def _reporter(ctx: TaskContext, total: int) -> Callable[[int], None]:
    """Return a function reporting `done` of `total`, held below 100 until the handler ends."""
    last = -1

    def report(done: int) -> None:
        nonlocal last
        percent = min(99, done * 100 // total) if total > 0 else 99
        if percent > last:
            last = percent
            ctx.progress(percent)

    return report


def _small_primes(limit: int) -> list[int]:
    """Return the primes up to `limit` with a plain sieve."""
    flags = bytearray([1]) * (limit + 1)
    flags[: min(2, limit + 1)] = bytes(min(2, limit + 1))
    for n in range(2, math.isqrt(limit) + 1):
        if flags[n]:
            flags[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return [n for n, flag in enumerate(flags) if flag]


def _sieve(low: int, high: int, base: list[int]) -> bytearray:
    """Return one flag per number in [low, high): 1 where it is prime."""
    flags = bytearray([1]) * (high - low)
    for p in base:
        if p * p >= high:
            break
        start = max(p * p, -(-low // p) * p) - low
        flags[start::p] = bytes(len(range(start, high - low, p)))
    for n in range(low, min(2, high)):
        flags[n - low] = 0
    return flags


class _Counts:
    """Running line, word and character counts over text that arrives in pieces."""

    def __init__(self) -> None:
        self.lines = self.words = self.characters = 0
        self.in_word = self.ends_line = False

    def add(self, text: str) -> None:
        """Count `text`, joining a word split across two pieces."""
        if not text:
            return
        self.characters += len(text)
        self.lines += text.count("\n")
        self.words += len(text.split())
        if self.in_word and not text[0].isspace():
            self.words -= 1
        self.in_word = not text[-1].isspace()
        self.ends_line = text.endswith("\n")

    def summary(self) -> dict[str, int]:
        """Return the counts; a last line without a newline still counts."""
        lines = self.lines + (1 if self.characters and not self.ends_line else 0)
        return {"lines": lines, "words": self.words, "characters": self.characters}


def data_path(root: Path, payload: dict[str, Any], name: str) -> Path:
    """Resolve `payload[name]` under `root`; fail the task if the path leads out of it."""
    raw = payload.get(name)
    if not isinstance(raw, str) or not raw or len(raw) > MAX_PATH or "\0" in raw:
        raise HandlerFailed(
            f"payload.{name} must be a relative path of 1 to {MAX_PATH} characters, "
            f"got {_show(raw)}."
        )
    if os.path.isabs(raw):
        raise HandlerFailed(
            f"payload.{name} must be relative to the data folder, got {_show(raw)}."
        )
    try:
        path = (root / raw).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise HandlerFailed(f"payload.{name} {_show(raw)} cannot be resolved.") from None
    if not path.is_relative_to(root):
        raise HandlerFailed(f"payload.{name} {_show(raw)} leads outside the data folder.")
    if path == root:
        raise HandlerFailed(
            f"payload.{name} must name a file inside the data folder, got {_show(raw)}."
        )
    return path


@contextmanager
def _open_input(root: Path, payload: dict[str, Any], name: str) -> Iterator[tuple[IO[bytes], int]]:
    """Open the regular file at `payload[name]` for reading; yield it and its size."""
    path, shown = data_path(root, payload, name), _show(payload[name])
    try:
        # O_NOFOLLOW: a symlink swapped in after the check is refused; O_NONBLOCK: a FIFO
        # cannot hang the attempt before the regular-file check below.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise HandlerFailed(f"payload.{name} {shown} does not exist in the data folder.") from None
    except OSError as exc:
        raise HandlerFailed(f"payload.{name} {shown} cannot be opened: {exc.strerror}.") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise HandlerFailed(f"payload.{name} {shown} is not a regular file.")
    with os.fdopen(fd, "rb") as fh:
        yield fh, info.st_size


def _chunks(ctx: TaskContext, fh: IO[bytes], expected: int) -> Iterator[bytes]:
    """Yield the file in chunks, checking for cancel and reporting progress by bytes."""
    report, done = _reporter(ctx, expected), 0
    while True:
        _stop_if_cancelled(ctx)
        chunk = fh.read(CHUNK)
        if not chunk:
            return
        done += len(chunk)
        report(done)
        yield chunk


def _write_json(path: Path, data: Any) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, then a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise HandlerFailed(f"The output folder cannot be written: {exc.strerror}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        os.replace(temp, path)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(temp)
        raise HandlerFailed(f"The output file cannot be written: {exc.strerror}.") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _only(
    payload: dict[str, Any], required: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> None:
    """Fail unless the payload has every required field and no unknown one."""
    missing = sorted(required - payload.keys())
    if missing:
        raise HandlerFailed(f"payload.{missing[0]} is required.")
    unknown = sorted(payload.keys() - required - optional)
    if unknown:
        names = ", ".join(_show(k) for k in unknown[:5])
        raise HandlerFailed(f"The payload has unknown fields: {names}.")


def _show(value: Any) -> str:
    """Return a short repr of a client's value, safe to put in an error sentence."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
