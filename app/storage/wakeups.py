"""Wake-ups across processes on SQLite: what NOTIFY does on PostgreSQL.

A process that listens on a database file binds a Unix datagram socket for one channel in
a directory of its own user's, named after the file (under the system's temporary
directory). Once a write transaction has committed, what it asked for goes to every
socket of that channel bound by another process:
- READY, when it made work ready (`notify.announce`): a scheduler starts a pass now
  instead of at its next polling tick;
- ENDED, with the ids of the tasks it ended, and EVENTS, when it wrote task events: the
  requests waiting for those tasks, and the event streams, of an API process whose
  scheduler runs elsewhere read again now.
Within one process they are woken directly.

A wake-up is a hint: one lost (a full socket queue, a directory that cannot be made or
is not this user's alone, a platform without Unix sockets) costs the wait for the next
polling tick, never a task, and never fails the transaction that rang. A socket left by a
process that died is removed by the first sender that finds nobody reading it. The API
and the scheduler processes must share the user and the temporary directory (not two
containers, or two systemd units with PrivateTmp) for the wake-ups to reach.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import URL, Engine
from sqlalchemy.util import asbool

log = logging.getLogger("app.notify")

SUFFIX = ".sock"
READY, ENDED, EVENTS = "ready", "ended", "events"
# The largest datagram a listener reads: a payload of ids is cut well below it.
MAX_DATAGRAM = 65_536
# Unix datagram sockets and user ids: not on Windows, where every scheduler polls.
# A listing of the sockets' directory is reused while its modification time, at least
# this old when read, stays the same: file systems stamp it with a coarse clock (a
# jiffy on ext4 and tmpfs, a whole second on some, two on FAT), and a socket bound in
# the same tick would leave it unchanged. The directory changes when a process starts
# or stops: past that, every ring reuses the listing.
LISTING_SETTLED_NS = 5_000_000_000
SUPPORTED = hasattr(socket, "AF_UNIX") and hasattr(os, "getuid")
# What the write transaction this thread is in asked to send: payloads by channel.
_asked: ContextVar[dict[str, list[str]] | None] = ContextVar("wake_others", default=None)
# The names of the sockets this process bound: it wakes its own schedulers directly.
_own: set[str] = set()
_bells: weakref.WeakKeyDictionary[Engine, Bell | None] = weakref.WeakKeyDictionary()
_guard = threading.Lock()
_sending: tuple[int, socket.socket] | None = None


def ask(channel: str = READY, payloads: Iterable[str] = ("",)) -> None:
    """Inside a write transaction: send `payloads` on `channel` to the other processes
    once it commits (each payload once)."""
    asked = _asked.get()
    if asked is not None:
        sent = asked.setdefault(channel, [])
        sent.extend(p for p in payloads if p not in sent)


@contextmanager
def after_commit(engine: Engine) -> Iterator[None]:
    """Around a write transaction: ring `engine`'s bell with what it asked, if it
    committed."""
    asked: dict[str, list[str]] = {}
    token = _asked.set(asked)
    try:
        yield
    finally:
        _asked.reset(token)
    if asked:
        try:
            found = bell(engine)
            if found is not None:
                found.ring(asked)
        except Exception:  # committed all the same: the others poll
            log.warning("could not wake the other processes' listeners", exc_info=True)


def bell(engine: Engine) -> Bell | None:
    """Return the bell of `engine`'s database file; None if it has none (PostgreSQL, a
    database in memory, no usable temporary directory)."""
    with _guard:
        if engine not in _bells:
            _bells[engine] = _new_bell(engine)
        return _bells[engine]


def _new_bell(engine: Engine) -> Bell | None:
    path = database_file(engine.url) if engine.dialect.name == "sqlite" else None
    if not SUPPORTED or path is None:
        return None
    try:
        return Bell(path)
    except OSError as exc:  # no temporary directory at all (a read-only container)
        log.warning("other processes' schedulers are not woken (%s); they poll", exc)
        return None


def database_file(url: URL) -> str | None:
    """Return the file a SQLite URL opens, as the driver reads it, or None for a
    database in memory. With `uri=true` the name is a `file:` URI: its path, unquoted."""
    name = url.database or ""
    if asbool(url.query.get("uri", False)) and name.startswith("file:"):
        name = unquote(urlsplit(name).path)
    if name in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return name


def directory_of(database: str) -> Path:
    """Return where the schedulers of the database file `database` bind their sockets."""
    key = hashlib.sha256(os.path.realpath(database).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"task-scheduler-{os.getuid()}-{key}"


class Bell:
    """The sockets of one database file's schedulers: ring them, or listen to them."""

    def __init__(self, database: str) -> None:
        self.directory = directory_of(database)
        # The directory's listing, with the identity and modification time it had.
        self._listing: tuple[tuple[int, int], list[str]] | None = None

    def ring(self, asked: Mapping[str, Sequence[str]] | None = None) -> None:
        """Send the payloads `asked` gives each channel (READY's alone when None) to every
        socket of that channel another process bound; the directory is read once."""
        try:
            names = self._names()
        except OSError:
            return  # nobody has bound one yet, or the directory is not ours alone
        sender = _sender()
        datagrams = {c: [p.encode() for p in ps] for c, ps in (asked or {READY: ("",)}).items()}
        for name in names:
            channel = name.split(".", 1)[0]
            if channel not in datagrams or not name.endswith(SUFFIX) or name in _own:
                continue
            path = str(self.directory / name)
            try:
                for datagram in datagrams[channel]:
                    sender.sendto(datagram, path)
            except (ConnectionRefusedError, FileNotFoundError):
                _remove_socket(path)  # nobody reads it: its process is gone
            except OSError:
                pass  # its queue is full: it has a wake-up waiting already

    def _names(self) -> list[str]:
        """Return the names in the directory, read again only when it changed.

        Every write transaction rings, so the listing is kept while the directory's
        modification time stays the same; but only once that time is LISTING_SETTLED_NS
        old, since a socket bound within the same tick of the file system's clock would
        leave it unchanged.
        """
        found = _check_private(self.directory)
        key = (found.st_ino, found.st_mtime_ns)
        kept = self._listing
        if kept is not None and kept[0] == key:
            return kept[1]
        names = os.listdir(self.directory)
        settled = time.time_ns() - found.st_mtime_ns > LISTING_SETTLED_NS
        self._listing = (key, names) if settled else None
        return names

    def listen(self, channel: str, on_ring: Callable[[str], None]) -> Doorbell:
        """Return a doorbell calling `on_ring` with each payload another process sends
        on `channel`."""
        return Doorbell(self.directory, channel, on_ring)


class Doorbell:
    """A thread reading one socket, calling `on_ring` with each payload that arrives.

    It has the interface of notify.Listener: `start`, `stop`, and `listening`, set while
    the socket is bound.
    """

    def __init__(self, directory: Path, channel: str, on_ring: Callable[[str], None]) -> None:
        self.directory = directory
        self.name = f"{channel}.{os.getpid()}-{uuid.uuid4().hex[:6]}{SUFFIX}"
        self._on_ring = on_ring
        self._socket: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def start(self) -> None:
        """Bind the socket and read it in the background; without one, log why."""
        try:
            self._socket = self._bind()
        except OSError as exc:
            log.warning(
                "cannot listen for other processes' wake-ups in %s (%s); work they submit "
                "waits for the polling interval",
                self.directory,
                exc.strerror or exc,
            )
            return
        self.listening.set()
        self._thread = threading.Thread(target=self._run, name="doorbell", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading, and remove the socket."""
        self._stop.set()
        if self._socket is not None:
            with suppress(OSError):  # wake the reader now
                _sender().sendto(b"", str(self.path))
        if self._thread is not None:
            self._thread.join(5)
        self.listening.clear()
        _own.discard(self.name)
        with suppress(OSError):
            os.unlink(self.path)
        with suppress(OSError):
            os.rmdir(self.directory)  # only once the last socket is gone

    def _bind(self) -> socket.socket:
        for tries_left in (1, 0):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                _make_private(self.directory)
                sock.bind(str(self.path))
            except FileNotFoundError:  # the last one out removed the directory meanwhile
                sock.close()
                if tries_left:
                    continue
                raise
            except OSError:
                sock.close()
                raise
            _own.add(self.name)
            return sock
        raise AssertionError("unreachable")

    def _run(self) -> None:
        assert self._socket is not None
        sock = self._socket
        try:
            while not self._stop.is_set():
                sock.settimeout(1.0)  # to see a stop whose wake-up was lost
                try:
                    received = [sock.recv(MAX_DATAGRAM)]
                except TimeoutError:
                    continue
                # What arrived meanwhile is handled together (a pass may run once for all).
                sock.setblocking(False)
                with suppress(BlockingIOError):
                    while True:
                        received.append(sock.recv(MAX_DATAGRAM))
                for payload in dict.fromkeys(received):
                    if self._stop.is_set():
                        break
                    self._on_ring(payload.decode(errors="replace"))
        except OSError as exc:
            log.warning("stopped listening for other processes' wake-ups: %s", exc)
        finally:
            self.listening.clear()
            sock.close()


def _sender() -> socket.socket:
    """Return this process's unbound socket for sending (a forked worker makes its own)."""
    global _sending
    with _guard:
        if _sending is None or _sending[0] != os.getpid():
            if _sending is not None:
                _sending[1].close()  # the parent's, inherited
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
            _sending = (os.getpid(), sender)
        return _sending[1]


def _after_fork_in_child() -> None:
    """A forked child (a handler's own worker, say) has bound no socket: what it commits
    must ring its parent's sockets as another process's commit does. Its lock is new too,
    in case another thread of the parent held it at the fork."""
    global _guard
    _guard = threading.Lock()
    _own.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_sender() -> None:
    if _sending is not None:
        _sending[1].close()


def _make_private(directory: Path) -> None:
    """Make `directory` if needed; refuse one that is not this user's alone."""
    with suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    _check_private(directory)


def _check_private(directory: Path) -> os.stat_result:
    """Raise unless `directory` is a directory (not a link to one) of this user's alone;
    return what `lstat` found."""
    found = directory.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
        raise PermissionError(f"{directory} is not a directory of this user's")
    if found.st_mode & 0o077:
        raise PermissionError(f"{directory} is open to other users")
    return found


def _remove_socket(path: str) -> None:
    """Remove the socket file at `path`; never anything else found there."""
    with suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
