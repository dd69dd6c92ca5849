"""Wake-ups across processes on SQLite: a committed announce rings the other processes'
scheduler sockets, a committed end of tasks their waiting requests' sockets, and only
then."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from app import events
from app.services.listening import LazyListener
from app.storage import database, wakeups
from app.storage.database import ENDED_CHANNEL, EVENTS_CHANNEL
from app.storage.notify import announce
from tests.support.waiting import wait_for

DEADLINE_S = 10.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = create_engine(f"sqlite:///{tmp_path / 'tasks.db'}")
    with made.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("CREATE TABLE task_events (task_id, type, attempt, status, reason, at)"))
    yield made
    made.dispose()


@pytest.fixture
def other_process(engine: Engine) -> Iterator[socket.socket]:
    """A socket bound where another process's scheduler would bind its own."""
    bell = wakeups.bell(engine)
    assert bell is not None
    wakeups._make_private(bell.directory)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = bell.directory / f"ready.1-other{wakeups.SUFFIX}"
    sock.bind(str(path))
    sock.settimeout(0.05)
    yield sock
    sock.close()
    path.unlink(missing_ok=True)
    bell.directory.rmdir()


def received(sock: socket.socket) -> list[bytes]:
    found = []
    while True:
        try:
            found.append(sock.recv(wakeups.MAX_DATAGRAM))
        except TimeoutError:
            return found


def rings(sock: socket.socket) -> int:
    return len(received(sock))


def test_a_committed_announce_rings_the_other_processes_once(
    engine: Engine, other_process: socket.socket
) -> None:
    with database.write(engine) as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        announce(conn)
        announce(conn)
        assert rings(other_process) == 0  # not before the commit
    assert rings(other_process) == 1


def test_a_rolled_back_or_silent_write_rings_nobody(
    engine: Engine, other_process: socket.socket
) -> None:
    with pytest.raises(RuntimeError), database.write(engine) as conn:
        announce(conn)
        raise RuntimeError("the body failed")
    with database.write(engine) as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert rings(other_process) == 0


def test_a_socket_nobody_reads_is_removed(engine: Engine, other_process: socket.socket) -> None:
    bell = wakeups.bell(engine)
    assert bell is not None
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale = bell.directory / f"ready.2-dead{wakeups.SUFFIX}"
    gone.bind(str(stale))
    gone.close()  # its process died: the file stays
    bell.ring()
    assert not stale.exists()
    assert rings(other_process) == 1


def _listening(engine: Engine) -> tuple[wakeups.Bell, wakeups.Doorbell, threading.Event]:
    """Return `engine`'s bell and a started READY doorbell setting the event it returns."""
    bell = wakeups.bell(engine)
    assert bell is not None
    rung = threading.Event()
    doorbell = bell.listen(wakeups.READY, lambda _payload: rung.set())
    doorbell.start()
    return bell, doorbell, rung


def test_a_doorbell_wakes_on_a_ring_and_cleans_up_as_it_stops(engine: Engine) -> None:
    bell, doorbell, rung = _listening(engine)
    try:
        assert doorbell.listening.is_set()
        assert doorbell.path.exists()
        bell.ring()  # from this process: its own scheduler is woken directly instead
        assert not rung.wait(0.2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"!", str(doorbell.path))  # as another process rings
        assert rung.wait(DEADLINE_S)
    finally:
        doorbell.stop()
    assert not doorbell.path.exists()
    assert not bell.directory.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_by_a_handler_rings_its_parents_sockets(engine: Engine) -> None:
    """A child forked while the parent listens inherits the parent's record of the sockets
    it bound; the child's commits must still wake the parent, as another process's do."""
    bell, doorbell, rung = _listening(engine)
    try:
        assert doorbell.listening.is_set()
        pid = os.fork()
        if pid == 0:  # the child: ring as a commit of its own would, then leave at once
            code = 1
            try:
                bell.ring()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert rung.wait(DEADLINE_S)
    finally:
        doorbell.stop()


def test_a_directory_open_to_others_is_not_used(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    bell = wakeups.bell(engine)
    assert bell is not None
    bell.directory.mkdir()
    os.chmod(bell.directory, 0o777)
    try:
        doorbell = bell.listen(wakeups.READY, lambda _payload: None)
        with caplog.at_level(logging.WARNING, "app.notify"):
            doorbell.start()
        assert not doorbell.listening.is_set()
        assert "open to other users" in caplog.text
        assert not doorbell.path.exists()
    finally:
        bell.directory.rmdir()


def test_a_database_in_memory_or_on_postgresql_has_no_bell() -> None:
    assert wakeups.bell(create_engine("sqlite://")) is None
    assert wakeups.bell(create_engine("sqlite:///:memory:")) is None
    assert wakeups.bell(create_engine("postgresql+psycopg://x@127.0.0.1/none")) is None


def test_a_database_named_by_a_uri_shares_the_bell_of_its_file(tmp_path: Path) -> None:
    """`sqlite:///file:...?uri=true` opens the same file as its plain path: the processes
    on it must ring each other whichever form each was given."""
    path = tmp_path / "tasks.db"
    plain = wakeups.bell(create_engine(f"sqlite:///{path}"))
    assert plain is not None
    for url in (
        f"sqlite:///file:{path}?uri=true",
        f"sqlite:///file://{path}?mode=rwc&uri=true",
        f"sqlite:///file:{str(path).replace('tasks', 't%61sks')}?uri=true",
    ):
        found = wakeups.bell(create_engine(url))
        assert found is not None and found.directory == plain.directory, url
    relative = wakeups.bell(create_engine("sqlite:///file:tasks.db?uri=true"))
    assert relative is not None
    assert relative.directory == wakeups.directory_of(os.path.realpath("tasks.db"))
    memory = "sqlite:///file::memory:?cache=shared&uri=true"
    assert wakeups.bell(create_engine(memory)) is None
    shared_memory = make_url("sqlite:///file:shared?mode=memory&cache=shared&uri=true")
    assert wakeups.database_file(shared_memory) is None


def test_a_failure_to_ring_does_not_fail_the_committed_write(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: wakeups.Bell, asked: dict[str, list[str]]) -> None:
        raise RuntimeError("no socket today")

    monkeypatch.setattr(wakeups.Bell, "ring", broken)
    with caplog.at_level(logging.WARNING, "app.notify"), database.write(engine) as conn:
        conn.execute(text("INSERT INTO t VALUES (7)"))
        announce(conn)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT x FROM t")).scalar_one() == 7
    assert "could not wake the other processes' listeners" in caplog.text


def test_without_a_temporary_directory_there_is_no_bell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def none_usable() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(wakeups.tempfile, "gettempdir", none_usable)
    made = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with caplog.at_level(logging.WARNING, "app.notify"):
        assert wakeups.bell(made) is None
    assert "No usable temporary directory" in caplog.text
    made.dispose()


def bound(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    return sock


def test_a_directory_that_is_not_this_users_alone_is_neither_rung_nor_emptied(
    engine: Engine, tmp_path: Path
) -> None:
    bell = wakeups.bell(engine)
    assert bell is not None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    kept = elsewhere / f"important{wakeups.SUFFIX}"
    kept.write_text("not a socket")
    listener = bound(elsewhere / f"ready.3-listener{wakeups.SUFFIX}")
    try:
        bell.directory.symlink_to(elsewhere)  # planted where the bell looks
        bell.ring()
        bell.directory.unlink()
        bell.directory.mkdir()
        os.chmod(bell.directory, 0o777)  # open to other users
        (bell.directory / f"ready.4-open{wakeups.SUFFIX}").symlink_to(listener.getsockname())
        bell.ring()
        assert rings(listener) == 0
        assert kept.read_text() == "not a socket"
    finally:
        listener.close()
        if bell.directory.is_symlink():
            bell.directory.unlink()
        elif bell.directory.exists():
            for entry in bell.directory.iterdir():
                entry.unlink()
            bell.directory.rmdir()


def test_only_sockets_are_removed_as_stale(engine: Engine, other_process: socket.socket) -> None:
    bell = wakeups.bell(engine)
    assert bell is not None
    kept = bell.directory / f"notes{wakeups.SUFFIX}"
    kept.write_text("a file, not a socket")
    try:
        bell.ring()
        assert kept.exists()
        assert rings(other_process) == 1
    finally:
        kept.unlink()


def test_ending_tasks_sends_their_ids_to_the_waiting_side_and_events_to_the_streams(
    engine: Engine, other_process: socket.socket
) -> None:
    bell = wakeups.bell(engine)
    assert bell is not None
    heard: dict[str, list[str]] = {wakeups.ENDED: [], wakeups.EVENTS: []}
    doorbells = [
        bell.listen(channel, lambda payload, channel=channel: heard[channel].append(payload))
        for channel in heard
    ]
    for doorbell in doorbells:
        doorbell.start()
        wakeups._own.discard(doorbell.name)  # as if another process had bound it
    try:
        with database.write(engine):
            events.stage(
                [
                    ("a", "noop", 1, "COMPLETED", "the handler returned"),
                    ("b", "noop", 1, "FAILED", "boom"),
                    ("c", "noop", 1, "RUNNING", "claimed"),
                ]
            )
        wait_for(lambda: heard[wakeups.ENDED] and heard[wakeups.EVENTS], what="the rings")
        assert heard[wakeups.ENDED] == ["a,b"]
        assert heard[wakeups.EVENTS] == [""]
        assert rings(other_process) == 0  # nothing was made ready
    finally:
        for doorbell in doorbells:
            doorbell.stop()


@pytest.mark.parametrize("channel", [ENDED_CHANNEL, EVENTS_CHANNEL])
def test_waiting_requests_and_streams_listen_on_a_sqlite_file_from_their_first_use(
    engine: Engine, channel: str
) -> None:
    heard: list[str] = []
    lazy = LazyListener(engine, heard.append, channel)
    assert lazy.listener is None  # nothing bound before anyone waits
    lazy.want()
    listener = lazy.listener
    assert isinstance(listener, wakeups.Doorbell)
    try:
        assert listener.listening.is_set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"t1,t2", str(listener.path))  # as another process's commit does
        wait_for(lambda: heard, what="the payload")
        assert heard == ["t1,t2"]
        assert lazy.recheck_s(1.0) == 1.0  # the safety net keeps its pace on SQLite
    finally:
        lazy.stop()
    assert not listener.path.exists()


def _counting_listdir(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    listed: list[str] = []
    listdir = os.listdir

    def counted(path: str | Path) -> list[str]:
        listed.append(str(path))
        return listdir(path)

    monkeypatch.setattr(wakeups.os, "listdir", counted)
    return listed


def test_the_directory_is_listed_again_only_when_it_changed(
    engine: Engine, other_process: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wakeups, "LISTING_SETTLED_NS", 0)
    listed = _counting_listdir(monkeypatch)
    bell = wakeups.bell(engine)
    assert bell is not None
    for _ in range(3):
        bell.ring()
    assert len(listed) == 1
    assert rings(other_process) == 3
    # A process starting now binds its socket: the directory changed, it is rung too.
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = bell.directory / f"ready.3-new{wakeups.SUFFIX}"
    newcomer.bind(str(path))
    newcomer.settimeout(0.05)
    try:
        bell.ring()
        assert len(listed) == 2
        assert rings(newcomer) == 1
    finally:
        newcomer.close()
        path.unlink()


def test_a_listing_read_within_the_clocks_tick_of_a_change_is_not_kept(
    engine: Engine, other_process: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket bound within the same tick as the listing would not change the time.
    monkeypatch.setattr(wakeups, "LISTING_SETTLED_NS", 10**18)
    listed = _counting_listdir(monkeypatch)
    bell = wakeups.bell(engine)
    assert bell is not None
    bell.ring()
    bell.ring()
    assert len(listed) == 2
    assert rings(other_process) == 2


def test_a_socket_bound_within_a_coarse_clocks_tick_of_the_listing_is_still_rung(
    engine: Engine, other_process: socket.socket
) -> None:
    """A file system stamping whole seconds leaves the directory's time unchanged when a
    socket is bound in the same second as the last change: a listing read then must not
    be kept."""
    bell = wakeups.bell(engine)
    assert bell is not None
    second = (time.time_ns() // 10**9 - 1) * 10**9  # the last change, a second ago
    os.utime(bell.directory, ns=(second, second))
    bell.ring()
    assert rings(other_process) == 1
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = bell.directory / f"ready.4-same-second{wakeups.SUFFIX}"
    newcomer.bind(str(path))
    newcomer.settimeout(0.05)
    os.utime(bell.directory, ns=(second, second))  # as the coarse clock would leave it
    try:
        bell.ring()
        assert rings(newcomer) == 1
    finally:
        newcomer.close()
        path.unlink()
