"""The executor the scheduler runs attempts on: the ThreadPoolExecutor's threads, each
taking one attempt after another from a queue."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.runtime.attempt import ThreadExecutor
from app.statuses import Status
from app.storage.store import Outcome

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 10.0


class Recorded:
    """A job that notes its begin, its end and its thread, and can be held in its run."""

    def __init__(
        self,
        hold: threading.Event | None = None,
        fail_begin: bool = False,
        raises: BaseException | None = None,
    ) -> None:
        self.hold = hold
        self.fail_begin = fail_begin
        self.raises = raises
        self.began = threading.Event()
        self.ended = threading.Event()
        self.thread: str | None = None
        self.outcome: Outcome | None = None

    def begin(self) -> None:
        self.thread = threading.current_thread().name
        self.began.set()
        if self.fail_begin:
            raise RuntimeError("begin failed")

    def run(self) -> Outcome:
        if self.hold is not None:
            assert self.hold.wait(DEADLINE_S)
        if self.raises is not None:
            raise self.raises
        return Outcome(Status.COMPLETED)

    def end(self, outcome: Outcome | None) -> None:
        self.outcome = outcome
        self.ended.set()


def test_jobs_run_at_once_each_on_a_thread_of_its_own_up_to_the_workers() -> None:
    executor = ThreadExecutor(3)
    release = threading.Event()
    try:
        jobs = [Recorded(release) for _ in range(3)]
        for job in jobs:
            executor.start(job)
        # All three hold their threads together: none waits for another to return.
        assert all(job.began.wait(DEADLINE_S) for job in jobs)
        assert len({job.thread for job in jobs}) == 3
        assert all(job.thread is not None and job.thread.startswith("task") for job in jobs)
        release.set()
        assert all(job.ended.wait(DEADLINE_S) for job in jobs)
        assert all(job.outcome == Outcome(Status.COMPLETED) for job in jobs)
        # The threads take further jobs once free.
        again = [Recorded() for _ in range(6)]
        for job in again:
            executor.start(job)
        assert all(job.ended.wait(DEADLINE_S) for job in again)
    finally:
        release.set()
        executor.shutdown()


def test_a_job_failing_outside_its_handler_does_not_cost_its_thread() -> None:
    executor = ThreadExecutor(1)
    try:
        failing = Recorded(fail_begin=True)
        executor.start(failing)
        assert failing.began.wait(DEADLINE_S)
        # The only thread runs the next job: the failure did not end it.
        after = Recorded()
        executor.start(after)
        assert after.ended.wait(DEADLINE_S)
        assert not failing.ended.is_set()
    finally:
        executor.shutdown()


def test_a_handler_calling_sys_exit_does_not_cost_its_thread() -> None:
    # SystemExit is not an Exception: a loop catching only those would end, and the
    # attempts the scheduler gave to the slot it believes free would never start.
    executor = ThreadExecutor(1)
    try:
        leaving = Recorded(raises=SystemExit(1))
        executor.start(leaving)
        assert leaving.ended.wait(DEADLINE_S)
        assert leaving.outcome is None  # the handler never returned
        after = Recorded()
        executor.start(after)
        assert after.ended.wait(DEADLINE_S)
        assert after.outcome == Outcome(Status.COMPLETED)
    finally:
        executor.shutdown()


def test_threads_started_before_one_failed_to_start_are_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A limit on threads (a container's) may let only some of the pool's threads start:
    # the construction fails, and those that started must not wait for jobs for ever.
    before = set(threading.enumerate())
    real_start = threading.Thread.start
    started: list[threading.Thread] = []

    def start(thread: threading.Thread) -> None:
        if len(started) == 2:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        ThreadExecutor(4)
    monkeypatch.undo()
    assert len(started) == 2
    for thread in started:
        thread.join(DEADLINE_S)
        assert not thread.is_alive()
    assert set(threading.enumerate()) <= before


def test_a_shutdown_drops_the_jobs_not_started_and_lets_the_running_one_return() -> None:
    executor = ThreadExecutor(1)
    release = threading.Event()
    running = Recorded(release)
    waiting = Recorded()
    executor.start(running)
    assert running.began.wait(DEADLINE_S)
    executor.start(waiting)
    executor.shutdown()
    release.set()
    assert running.ended.wait(DEADLINE_S)
    assert running.outcome == Outcome(Status.COMPLETED)
    assert not waiting.began.wait(0.2)


def test_a_process_exits_with_an_executor_it_never_shut_down() -> None:
    # The pool's threads wait for jobs on a queue of their own; at the interpreter's exit
    # they must be told to stop, or its join of them would wait for ever.
    program = (
        "import threading\n"
        "from app.runtime.attempt import ThreadExecutor\n"
        "from tests.unit.test_thread_executor import Recorded\n"
        "executor = ThreadExecutor(4)\n"
        "job = Recorded()\n"
        "executor.start(job)\n"
        "assert job.ended.wait(10)\n"
        "print('done')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "done"
