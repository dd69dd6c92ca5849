"""gunicorn.conf.py's metrics directory: named before the app loads, emptied, kept tidy."""

from __future__ import annotations

import logging
import os
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.servers import ROOT

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def load_config(monkeypatch: pytest.MonkeyPatch, directory: Path | None) -> dict[str, Any]:
    """Run gunicorn.conf.py as gunicorn does; the environment is restored after the test."""
    monkeypatch.setenv(VARIABLE, "placeholder")  # so that teardown restores what was there
    if directory is None:
        monkeypatch.delenv(VARIABLE)
    else:
        monkeypatch.setenv(VARIABLE, str(directory))
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def fake_server() -> SimpleNamespace:
    """Return the attributes of gunicorn's Arbiter that on_starting uses."""
    log = SimpleNamespace(error_log=logging.getLogger("tests.gunicorn.error"))
    cfg = SimpleNamespace(address=[])  # it listens nowhere: no address to find taken
    return SimpleNamespace(
        log=log, cfg=cfg, handle_int=lambda: None, handle_term=lambda: None, signal=None
    )


def test_the_master_start_deletes_the_value_files_of_a_previous_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("counter_101.db", "histogram_101.db", "gauge_livesum_101.db"):
        (tmp_path / name).write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    config = load_config(monkeypatch, tmp_path)
    config["on_starting"](fake_server())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_dead_worker_leaves_its_counters_and_takes_its_live_gauges(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    names = ("counter_4242.db", "gauge_livesum_4242.db", "gauge_livemax_4242.db")
    for name in (*names, "gauge_livesum_77.db"):
        (tmp_path / name).write_bytes(b"")
    config = load_config(monkeypatch, tmp_path)
    config["child_exit"](fake_server(), SimpleNamespace(pid=4242))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db", "gauge_livesum_77.db"]


def test_without_a_directory_a_fresh_one_is_made_and_removed_at_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(monkeypatch, None)
    made = Path(config["metrics_dir"])
    assert made.is_dir() and not any(made.iterdir())
    config["_remove_metrics_dir"](os.getpid() + 1)  # a forked worker exiting
    assert made.is_dir()
    config["_remove_metrics_dir"](os.getpid())  # the master exiting
    assert not made.exists()


def test_a_directory_given_is_kept_at_exit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = load_config(monkeypatch, tmp_path / "metrics")
    config["on_starting"](fake_server())
    assert "_remove_metrics_dir" in config and not config["owned_metrics_dir"]
    assert (tmp_path / "metrics").is_dir()
