"""The example handlers called directly: results, progress, cancel, bad payloads, and a data
folder that no payload path can leave. Through the service: test_example_handlers_service.py
in tests/integration."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app import example_handlers
from app.config import ConfigError
from app.handlers import HandlerFailed, Registry, TaskContext, simulate

MiB = 1024 * 1024


def _ignore(percent: int) -> None:
    pass


@pytest.fixture
def registry(data_dir: Path) -> Registry:
    registry = Registry()
    example_handlers.register(registry)
    return registry


def run(
    registry: Registry,
    task_type: str,
    payload: dict[str, Any],
    *,
    cancel: threading.Event | None = None,
    progress: list[int] | None = None,
    on_progress: Callable[[int], None] = _ignore,
) -> Any:
    """Call the registered handler of `task_type` as the scheduler would."""
    handler = registry.resolve(task_type)
    assert handler is not simulate, f"{task_type} is not registered"
    seen = progress if progress is not None else []

    def record(percent: int) -> None:
        seen.append(percent)
        on_progress(percent)

    ctx = TaskContext("t-1", task_type, 1, payload, 1, cancel or threading.Event(), progress=record)
    result = handler(ctx)
    json.dumps(result)  # the scheduler stores it as JSON
    return result


def assert_sentence(failure: pytest.ExceptionInfo[HandlerFailed], *words: str) -> None:
    """Check the task's future `error`: one short sentence naming what was wrong."""
    message = str(failure.value)
    assert message.endswith(".") and len(message) <= 200, message
    for word in words:
        assert word in message, message


def assert_progress(seen: list[int]) -> None:
    assert seen, "no progress was reported"
    assert all(0 <= p <= 100 for p in seen), seen
    assert seen == sorted(seen), seen
    assert seen[-1] == 100 and seen.count(100) == 1, seen


# -- register -------------------------------------------------------------------------


def test_register_without_data_folder_offers_only_primes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASK_DATA_DIR", raising=False)
    registry = Registry()
    example_handlers.register(registry)
    assert registry.resolve("primes") is example_handlers.primes
    assert registry.resolve("checksum") is simulate
    assert registry.resolve("word_count") is simulate


def test_register_refuses_a_missing_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASK_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="TASK_DATA_DIR"):
        example_handlers.register(Registry())


# -- primes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("below", "count", "largest"),
    [
        (2, 0, None),
        (3, 1, 2),
        (100, 25, 97),
        (1_000_000, 78_498, 999_983),
        (10_000_000, 664_579, 9_999_991),
    ],
)
def test_primes_counts_known_values(
    registry: Registry, below: int, count: int, largest: int | None
) -> None:
    result = run(registry, "primes", {"below": below})
    assert result == {"below": below, "count": count, "largest": largest}


def test_primes_agrees_with_trial_division_across_segment_edges(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(example_handlers, "SEGMENT", 7)
    found = [n for n in range(2, 400) if all(n % d for d in range(2, int(n**0.5) + 1))]
    for below in range(2, 400):
        expected = [p for p in found if p < below]
        result = run(registry, "primes", {"below": below})
        assert result["count"] == len(expected), below
        assert result["largest"] == (expected[-1] if expected else None), below


def test_primes_reports_progress_up_to_100(registry: Registry) -> None:
    seen: list[int] = []
    run(registry, "primes", {"below": 1_000_000}, progress=seen)
    assert_progress(seen)
    assert len(seen) > 3


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, ["payload.below", "required"]),
        ({"below": "1000"}, ["payload.below", "integer", "'1000'"]),
        ({"below": True}, ["payload.below", "integer"]),
        ({"below": 10.0}, ["payload.below", "integer"]),
        ({"below": 1}, ["payload.below", "from 2 to 10000000"]),
        ({"below": 10_000_001}, ["payload.below", "from 2 to 10000000"]),
        ({"below": "x" * 5000}, ["payload.below", "..."]),
        ({"below": 10, "belwo": 10}, ["unknown", "'belwo'"]),
    ],
)
def test_primes_refuses_bad_payloads(
    registry: Registry, payload: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "primes", payload)
    assert_sentence(failure, *words)


def test_primes_stops_at_once_when_cancelled_before(registry: Registry) -> None:
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "primes", {"below": 10_000_000}, cancel=cancel)
    assert time.monotonic() - started < 1
    assert_sentence(failure, "stop")


def test_primes_stops_between_segments_when_cancelled_while_running(registry: Registry) -> None:
    cancel = threading.Event()
    seen: list[int] = []
    with pytest.raises(HandlerFailed, match="stop"):
        run(
            registry,
            "primes",
            {"below": 10_000_000},
            cancel=cancel,
            progress=seen,
            on_progress=lambda _: cancel.set(),
        )
    assert len(seen) == 1 and seen[0] < 100


# -- checksum -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * MiB + 17])
def test_checksum_matches_hashlib(registry: Registry, data_dir: Path, size: int) -> None:
    content = os.urandom(size)
    (data_dir / "in").mkdir()
    (data_dir / "in" / "blob.bin").write_bytes(content)
    seen: list[int] = []
    result = run(registry, "checksum", {"path": "in/blob.bin"}, progress=seen)
    assert result == {
        "path": "in/blob.bin",
        "bytes": size,
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    assert_progress(seen)


def test_checksum_stops_between_chunks_when_cancelled(registry: Registry, data_dir: Path) -> None:
    (data_dir / "big.bin").write_bytes(bytes(3 * MiB))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(HandlerFailed, match="stop"):
        run(registry, "checksum", {"path": "big.bin"}, cancel=cancel)
    cancel.clear()
    seen: list[int] = []
    with pytest.raises(HandlerFailed, match="stop"):
        run(
            registry,
            "checksum",
            {"path": "big.bin"},
            cancel=cancel,
            progress=seen,
            on_progress=lambda _: cancel.set(),
        )
    assert seen == [33]


def test_checksum_names_a_missing_file(registry: Registry) -> None:
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "checksum", {"path": "nope.txt"})
    assert_sentence(failure, "'nope.txt'", "does not exist")


def test_checksum_refuses_a_folder_and_a_fifo(registry: Registry, data_dir: Path) -> None:
    (data_dir / "sub").mkdir()
    os.mkfifo(data_dir / "pipe")
    for name in ("sub", "pipe"):
        with pytest.raises(HandlerFailed) as failure:
            run(registry, "checksum", {"path": name})
        assert_sentence(failure, "not a regular file")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, ["payload.path", "required"]),
        ({"path": ""}, ["payload.path", "relative path"]),
        ({"path": 7}, ["payload.path", "relative path"]),
        ({"path": "a\0b"}, ["payload.path", "relative path"]),
        ({"path": "a" * 2000}, ["payload.path", "relative path"]),
        ({"path": "a.txt", "mode": "fast"}, ["unknown", "'mode'"]),
    ],
)
def test_checksum_refuses_bad_payloads(
    registry: Registry, payload: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "checksum", payload)
    assert_sentence(failure, *words)


# -- no path leaves the data folder ---------------------------------------------------


@pytest.fixture
def escapes(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """Make a secret beside the data folder and symlinks inside it that lead to it."""
    (tmp_path / "secret.txt").write_text("the secret\n")
    (data_dir / "link.txt").symlink_to(tmp_path / "secret.txt")
    (data_dir / "outside").symlink_to(tmp_path)
    (data_dir / "loop").symlink_to(data_dir / "loop")
    return {
        "../secret.txt": "leads outside",
        "sub/../../secret.txt": "leads outside",
        "/etc/passwd": "must be relative",
        str(tmp_path / "secret.txt"): "must be relative",
        "link.txt": "leads outside",
        "outside/secret.txt": "leads outside",
        ".": "must name a file inside",
        "sub/..": "must name a file inside",
        "loop": "cannot be resolved",
    }


def test_input_paths_cannot_leave_the_data_folder(
    registry: Registry, escapes: dict[str, str]
) -> None:
    for path, words in escapes.items():
        for task_type in ("checksum", "word_count"):
            with pytest.raises(HandlerFailed) as failure:
                run(registry, task_type, {"path": path})
            assert_sentence(failure, "payload.path", words)


def test_output_paths_cannot_leave_the_data_folder(
    registry: Registry, data_dir: Path, tmp_path: Path, escapes: dict[str, str]
) -> None:
    (data_dir / "in.txt").write_text("one two\n")
    for path, words in escapes.items():
        with pytest.raises(HandlerFailed) as failure:
            run(registry, "word_count", {"path": "in.txt", "output": path})
        assert_sentence(failure, "payload.output", words)
    assert (tmp_path / "secret.txt").read_text() == "the secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "secret.txt"]


def test_a_symlink_inside_the_data_folder_is_followed(registry: Registry, data_dir: Path) -> None:
    (data_dir / "real.txt").write_bytes(b"abc")
    (data_dir / "alias.txt").symlink_to("real.txt")
    result = run(registry, "checksum", {"path": "alias.txt"})
    assert result["sha256"] == hashlib.sha256(b"abc").hexdigest()


# -- word_count -----------------------------------------------------------------------

TEXT = "Grüße aus Köln\n\n  two\twords  \nnaïve café ☕ end"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_word_count_counts_across_chunk_edges(
    registry: Registry, data_dir: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(example_handlers, "CHUNK", chunk)
    (data_dir / "in.txt").write_bytes(b"\xef\xbb\xbf" + TEXT.encode())  # with a BOM
    seen: list[int] = []
    result = run(registry, "word_count", {"path": "in.txt"}, progress=seen)
    assert result == {
        "path": "in.txt",
        "lines": 4,
        "words": len(TEXT.split()),
        "characters": len(TEXT),
    }
    assert_progress(seen)


@pytest.mark.parametrize(
    ("text", "lines", "words"),
    [("", 0, 0), ("\n", 1, 0), ("a", 1, 1), ("a b\nc\n", 2, 3), (" a  b ", 1, 2)],
)
def test_word_count_edge_cases(
    registry: Registry, data_dir: Path, text: str, lines: int, words: int
) -> None:
    (data_dir / "in.txt").write_text(text)
    result = run(registry, "word_count", {"path": "in.txt"})
    assert (result["lines"], result["words"], result["characters"]) == (lines, words, len(text))


def test_word_count_refuses_text_that_is_not_utf8(registry: Registry, data_dir: Path) -> None:
    (data_dir / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "word_count", {"path": "latin1.txt"})
    assert_sentence(failure, "'latin1.txt'", "not UTF-8")


def test_word_count_writes_its_report_atomically(registry: Registry, data_dir: Path) -> None:
    (data_dir / "in.txt").write_text("one two three\nfour\n")
    (data_dir / "reports").mkdir()
    (data_dir / "reports" / "out.json").write_text("old")
    result = run(registry, "word_count", {"path": "in.txt", "output": "reports/out.json"})
    summary = {"path": "in.txt", "lines": 2, "words": 4, "characters": 19}
    assert result == {**summary, "output": "reports/out.json"}
    assert json.loads((data_dir / "reports" / "out.json").read_text()) == summary
    assert [p.name for p in (data_dir / "reports").iterdir()] == ["out.json"]


def test_word_count_never_overwrites_its_input(registry: Registry, data_dir: Path) -> None:
    (data_dir / "in.txt").write_text("keep me\n")
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "word_count", {"path": "in.txt", "output": "./sub/../in.txt"})
    assert_sentence(failure, "payload.output")
    assert (data_dir / "in.txt").read_text() == "keep me\n"


def test_word_count_creates_the_output_folder(registry: Registry, data_dir: Path) -> None:
    (data_dir / "in.txt").write_text("x\n")
    run(registry, "word_count", {"path": "in.txt", "output": "a/b/out.json"})
    assert json.loads((data_dir / "a" / "b" / "out.json").read_text())["words"] == 1


def test_a_failed_write_keeps_the_old_report_and_no_temporary_file(
    registry: Registry, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_dir / "in.txt").write_text("new words\n")
    (data_dir / "out.json").write_text('{"old": true}')

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(example_handlers.os, "replace", broken_replace)
    with pytest.raises(HandlerFailed) as failure:
        run(registry, "word_count", {"path": "in.txt", "output": "out.json"})
    assert_sentence(failure, "cannot be written", "No space left")
    assert (data_dir / "out.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in data_dir.iterdir()) == ["in.txt", "out.json"]


def test_word_count_cancelled_writes_no_report(registry: Registry, data_dir: Path) -> None:
    (data_dir / "in.txt").write_text("words\n")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(HandlerFailed, match="stop"):
        run(registry, "word_count", {"path": "in.txt", "output": "out.json"}, cancel=cancel)
    assert not (data_dir / "out.json").exists()
