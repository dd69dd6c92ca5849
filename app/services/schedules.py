"""Recurring schedules: what a client may send, when each fires, and the firing itself.

A schedule fires at instants: every `interval_s` seconds from when its timing was set, or
at each match of a 5-field `cron` expression in its `timezone` (cronsim decides what a
match is, daylight saving time included). Every instant is a whole second in UTC, and it
names what the firing creates: the task `<schedule id>.<YYYYMMDDTHHMMSSZ>`, or each task of
a batch with that suffix (its dependencies on tasks of the same batch rewritten to match),
all under the batch id `<schedule id>.<instant>`.

A firing happens at most once: the transaction that stores its tasks also moves the
schedule's `next_fire_at` on, on the condition that it still holds the instant being fired
(storage/schedules.advance). Two instances that find the same firing due both try; one
commits, the other's condition fails and it stores nothing. A crash before the commit
leaves neither, and the firing is found due again.

After downtime several instants may be due at once. Those late by less than the
schedule's grace (grace_s) always run; of the later ones `catch_up` decides: `skip` runs
none, `last` the latest unless one is on time, a number N the latest up to N in all.
Those not run are counted as missed.
`overlap: skip` skips an instant while a task of the previous firing is unfinished.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import islice
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, available_timezones

from cronsim import CronSim, CronSimError

from app import faults
from app.errors import ApiError, DuplicateId, InvalidParameter, NotFound, ValidationFailed
from app.schemas import (
    FIRING_SUFFIX_LENGTH,
    ID_MESSAGE,
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_SCHEDULE_ID_LENGTH,
    unknown_field,
)
from app.services import batch
from app.services.admission import Admission
from app.services.submissions import OPEN, insert_tasks
from app.storage import database, tasks
from app.storage import schedules as rows

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

# The firer's logger too: one filter shows every change of a schedule.
log = logging.getLogger("app.schedules")

# "." and the instant: what a firing appends to an id.
MAX_INTERVAL_S = 366 * 86_400
MAX_CATCH_UP = 100
# How late an instant may be and still run whatever `catch_up` says (grace_s).
MIN_GRACE_S = 10
MAX_GRACE_S = 60
# On-time instants one run fires at most (an interval of 1 s: a minute's worth).
MAX_ON_TIME = MAX_GRACE_S + 1
# How many upcoming firings a schedule shows.
SHOWN_FIRINGS = 5
# Due schedules read at once, and pages of them one firer run handles at most.
DUE_PER_RUN = 100
MAX_PAGES = 10
# Missed instants of a cron expression counted at most after a long downtime.
MAX_WALK = 10_000
# More than any zone's clock change: where a scan for the next or last match starts.
DST_MARGIN = timedelta(hours=3)
# Matches a scan looks at: a match every minute gives 180 inside the margin.
MAX_SCAN = 400
FIELDS = ("id", "cron", "interval_s", "timezone", "task", "batch", "catch_up", "overlap", "paused")
EDITABLE = set(FIELDS) - {"id"}
_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: instants after a moment, in naive UTC."""

    cron: str | None
    interval_s: int | None
    timezone: str
    anchor: datetime

    def after(self, moment: datetime) -> datetime:
        """Return the first instant strictly after `moment`."""
        if self.interval_s is not None:
            elapsed = (moment - self.anchor).total_seconds()
            steps = max(0, int(elapsed // self.interval_s)) + 1
            return self.anchor + timedelta(seconds=steps * self.interval_s)
        # From a little before, kept only once past `moment` in UTC: in the hour a zone
        # repeats when its clocks go back, cronsim's local arithmetic can answer a match
        # of the first pass through that hour while `moment` is already in the second.
        for match in self._matches(moment - DST_MARGIN, reverse=False):
            if match > moment:
                return match
        raise ValueError(f"cron {self.cron!r} has no match after {moment}")

    def latest(self, moment: datetime) -> datetime | None:
        """Return the last instant at or before `moment`, or None if there is none."""
        if self.interval_s is not None:
            steps = int((moment - self.anchor).total_seconds() // self.interval_s)
            if steps < 1:
                return None
            return self.anchor + timedelta(seconds=steps * self.interval_s)
        for match in self._matches(moment + DST_MARGIN, reverse=True):
            if match <= moment:
                return match
        return None

    def _matches(self, start: datetime, *, reverse: bool) -> Iterator[datetime]:
        """Yield the cron expression's matches from `start` (naive UTC), in naive UTC, at
        most MAX_SCAN of them: enough to pass the margin around `start`."""
        assert self.cron is not None
        local = start.replace(tzinfo=UTC).astimezone(ZoneInfo(self.timezone))
        return (_naive(m) for m in islice(CronSim(self.cron, local, reverse=reverse), MAX_SCAN))

    def last(self, first: datetime, moment: datetime, n: int) -> list[datetime]:
        """Return the `n` latest instants from `first` to `moment`, oldest first."""
        found: list[datetime] = []
        latest = self.latest(moment)
        while latest is not None and latest >= first and len(found) < n:
            found.append(latest)
            latest = self.latest(latest - timedelta(seconds=1))
        return found[::-1]

    def count(self, first: datetime, moment: datetime) -> int:
        """Return how many instants lie from `first` (an instant) to `moment`, counting
        at most MAX_WALK for a cron expression."""
        if moment < first:
            return 0
        if self.interval_s is not None:
            return int((moment - first).total_seconds() // self.interval_s) + 1
        n = 0
        instant = first
        while instant <= moment and n < MAX_WALK:
            n += 1
            instant = self.after(instant)
        return n

    def upcoming(self, moment: datetime, n: int) -> list[datetime]:
        """Return the `n` instants from `moment` on (itself included if it is one)."""
        found = [moment]
        while len(found) < n:
            found.append(self.after(found[-1]))
        return found


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def stamp(instant: datetime) -> str:
    """Return the instant as it appears in ids: YYYYMMDDTHHMMSSZ."""
    return f"{instant.year:04d}{instant:%m%dT%H%M%S}Z"


def timing_of(row: dict[str, Any]) -> Timing:
    """Return a stored schedule's timing."""
    return Timing(row["cron"], row["interval_s"], row["timezone"], row["anchor_at"])


# -- validation -----------------------------------------------------------------------


def parse_new(body: dict[str, Any], admission: Admission = OPEN) -> dict[str, Any]:
    """Validate a `POST /api/schedules` body; return it normalised, or raise naming fields.

    What it creates must be a valid submission of types that handlers run."""
    unknown = sorted(set(body) - set(FIELDS))
    # Said with whatever else is wrong: `every` alone would not say that cron or
    # interval_s is missing.
    details: dict[str, str] = {name: unknown_field(name, FIELDS) for name in unknown}
    schedule_id = body.get("id")
    if not _valid_id(schedule_id):
        details["id"] = ID_MESSAGE.format(max=MAX_SCHEDULE_ID_LENGTH) + (
            f" A firing's batch id, {MAX_SCHEDULE_ID_LENGTH} characters at most and then '.'"
            " and its instant, must fit a batch id's 64."
        )
    spec = _parse_fields(body, details, require_pairs=True)
    if unknown:
        raise ValidationFailed(f"Unknown field {unknown[0]!r}.", details)
    if details:
        raise ValidationFailed("The schedule is invalid.", details)
    spec["id"] = schedule_id
    _check_work(spec, details, admission)
    if details:
        raise ValidationFailed("The schedule is invalid.", details)
    return spec


def _valid_id(value: Any) -> bool:
    return (
        type(value) is str
        and 1 <= len(value) <= MAX_SCHEDULE_ID_LENGTH
        and _ID.fullmatch(value) is not None
    )


def _parse_fields(
    body: dict[str, Any], details: dict[str, str], *, require_pairs: bool
) -> dict[str, Any]:
    """Check each field present; with `require_pairs`, exactly one of each pair."""
    spec: dict[str, Any] = {}
    for one, other in (("cron", "interval_s"), ("task", "batch")):
        given = [name for name in (one, other) if name in body]
        if len(given) == 2:
            details[one] = details[other] = f"Give exactly one of {one} and {other}, not both."
        elif not given and require_pairs:
            details[one] = f"Give exactly one of {one} and {other}."
    for name in body.keys() & _FIELD_RULES.keys():
        value = body[name]
        check, problem = _FIELD_RULES[name]
        wrong = problem if not check(value) else _deeper_problem(name, value)
        if wrong is None:
            spec[name] = _STORED.get(name, _as_is)(value)
        else:
            named_id = name == "task" and type(value) is dict and "id" in value
            details["task.id" if named_id else name] = wrong
    return spec


def _as_is(value: Any) -> Any:
    return value


def _deeper_problem(name: str, value: Any) -> str | None:
    """What is wrong with a field that has the right shape, if anything."""
    if name == "cron":
        try:
            # cronsim looks 50 years ahead for a match: none is an expression that
            # never fires ("0 0 */20 * 1L": day 1, 21 or 41 is never the last Monday).
            next(CronSim(value, datetime.now(UTC)))
        except (CronSimError, ValueError) as exc:
            return f"Not a valid cron expression: {str(exc)[:100]}."
        except StopIteration:
            return "This cron expression never matches a date."
    if name == "task" and "id" in value:
        return "A schedule's task has no id: each firing names it."
    return None


def _catch_up(value: Any) -> bool:
    return value in ("skip", "last") or (type(value) is int and 1 <= value <= MAX_CATCH_UP)


# Each field: whether its value has the right shape, and what to say when it has not.
_FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "cron": (
        lambda v: type(v) is str and len(v) <= 255 and len(v.split()) == 5,
        "Must be a cron expression of 5 fields, e.g. '*/5 * * * *'.",
    ),
    "interval_s": (
        lambda v: type(v) is int and 1 <= v <= MAX_INTERVAL_S,
        f"Must be a whole number of seconds from 1 to {MAX_INTERVAL_S}.",
    ),
    "timezone": (
        lambda v: _known_zone(v),
        "Unknown time zone; use an IANA name such as 'Europe/Paris'.",
    ),
    "task": (lambda v: type(v) is dict, "Must be a task body (an object), without id."),
    "batch": (
        lambda v: type(v) is dict,
        "Must be the body of POST /api/tasks/batch (an object).",
    ),
    "catch_up": (_catch_up, f"Must be 'skip', 'last' or a number from 1 to {MAX_CATCH_UP}."),
    "overlap": (lambda v: v in ("skip", "allow"), "Must be 'skip' or 'allow'."),
    "paused": (lambda v: type(v) is bool, "Must be true or false."),
}
# How a valid value is kept: a cron expression with single spaces, catch_up as text.
_STORED: dict[str, Callable[[Any], Any]] = {
    "cron": lambda v: " ".join(v.split()),
    "catch_up": str,
}


def _known_zone(zone: Any) -> bool:
    if type(zone) is not str or not 1 <= len(zone) <= 64 or zone.startswith(("/", ".")):
        return False
    return zone in _zones()


@cache
def _zones() -> frozenset[str]:
    """The IANA zones: not `localtime` or `posixrules` (a copy of whatever zone this
    host is set to, different from host to host) nor `Factory` (no zone at all)."""
    return frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


SAMPLE = datetime(2000, 1, 1)


def _check_work(spec: dict[str, Any], details: dict[str, str], admission: Admission) -> None:
    """Check that what the schedule creates is a valid submission, as a firing makes it."""
    kind = _kind(spec)
    try:
        items = wanted(spec["id"], kind, _body(spec), SAMPLE)
        batch.creation_order(items)  # no cycle
        admission.check_types(task["type"] for task in items)
    except ApiError as exc:
        # The ids as the schedule names them, not as a firing at SAMPLE would.
        named = {k: _unsampled(v) for k, v in (exc.details or {}).items() if isinstance(v, str)}
        if not named:
            details[kind] = _unsampled(exc.message)
        for key, text in named.items():
            if kind == "task":
                key = key.removeprefix("tasks.0").lstrip(".")
            details[f"{kind}.{key}" if key not in ("", "_") else kind] = text


def _unsampled(text: str) -> str:
    """`text` without the instant a firing at SAMPLE appends to each id."""
    return text.replace("." + stamp(SAMPLE), "")


def _check_dependencies(
    conn: Connection, schedule_id: str, kind: str, body: dict[str, Any]
) -> None:
    """Refuse work that depends on tasks no one stored: every firing would fail."""
    items = wanted(schedule_id, kind, body, SAMPLE)
    members = {task["id"] for task in items}
    outside = sorted({d for task in items for d in task["dependencies"] if d not in members})
    missing = sorted(set(outside) - tasks.existing(conn, outside))
    if missing:
        name = "task.dependencies" if kind == "task" else "batch"
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        named = "1 dependency names" if len(missing) == 1 else f"{len(missing)} dependencies name"
        raise ValidationFailed(
            f"{named} no stored task: {shown}.",
            {name: f"Unknown tasks: {shown}."},
        )


def _kind(spec: dict[str, Any]) -> str:
    return "task" if "task" in spec else "batch"


def _body(spec: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = spec[_kind(spec)]
    return body


def wanted(
    schedule_id: str, kind: str, body: dict[str, Any], instant: datetime
) -> list[dict[str, Any]]:
    """Return the validated tasks one firing at `instant` creates."""
    suffix = "." + stamp(instant)
    if kind == "task":
        return batch.parse_batch({"tasks": [{**body, "id": schedule_id + suffix}]})
    items = body.get("tasks")
    if isinstance(items, list):
        nameless = [
            f"tasks.{k}.id" for k, t in enumerate(items) if isinstance(t, dict) and "id" not in t
        ]
        if nameless:
            raise ValidationFailed(
                "Each task of a scheduled batch needs an id: a firing appends its instant.",
                {name: "Missing: the task of a schedule's batch needs an id." for name in nameless},
            )
        members = {t["id"] for t in items if isinstance(t, dict) and isinstance(t.get("id"), str)}
        suffixed = {m + suffix for m in members}
        aliases = [
            f"tasks.{k}.dependencies"
            for k, t in enumerate(items)
            if isinstance(t, dict)
            and isinstance(t.get("dependencies"), list)
            and any(d in suffixed for d in t["dependencies"])
        ]
        if aliases:
            raise ValidationFailed(
                "A dependency names a task of this batch as one firing would: name it "
                "without the instant, and each firing's tasks depend on each other.",
                {name: "Names a member with an instant." for name in aliases},
            )
        too_long = [
            f"tasks.{k}.id"
            for k, t in enumerate(items)
            if isinstance(t, dict)
            and isinstance(t.get("id"), str)
            and len(t["id"]) > MAX_ID_LENGTH - FIRING_SUFFIX_LENGTH
        ]
        if too_long:
            raise ValidationFailed(
                "Task ids of a scheduled batch are at most "
                f"{MAX_ID_LENGTH - FIRING_SUFFIX_LENGTH} characters: a firing appends its instant.",
                {name: "Too long." for name in too_long},
            )
        body = {"tasks": [_suffixed(t, members, suffix) for t in items]} | {
            k: v for k, v in body.items() if k != "tasks"
        }
    return batch.parse_batch(body)


def _suffixed(task: Any, members: set[str], suffix: str) -> Any:
    if not isinstance(task, dict) or not isinstance(task.get("id"), str):
        return task
    renamed = {**task, "id": task["id"] + suffix}
    dependencies = task.get("dependencies")
    if isinstance(dependencies, list):
        renamed["dependencies"] = [
            d + suffix if isinstance(d, str) and d in members else d for d in dependencies
        ]
    return renamed


def parse_edit(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a `PATCH /api/schedules/<id>` body: any editable fields, at least one."""
    unknown = sorted(set(body) - EDITABLE)
    if unknown:
        raise ValidationFailed(
            f"Field {unknown[0]!r} cannot be changed."
            if unknown[0] == "id"
            else f"Unknown field {unknown[0]!r}.",
            {
                name: unknown_field(name, EDITABLE) if name != "id" else "Cannot change."
                for name in unknown
            },
        )
    if not body:
        raise ValidationFailed("Nothing to change.", {"_": "Give at least one field."})
    details: dict[str, str] = {}
    spec = _parse_fields(body, details, require_pairs=False)
    if details:
        raise ValidationFailed("The change is invalid.", details)
    return spec


# -- the API's operations --------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    """A schedule as stored, and whether this request created it."""

    schedule: dict[str, Any]
    created: bool


def create(engine: Engine, spec: dict[str, Any], now: datetime | None = None) -> Created:
    """Store a new schedule, or return the same one for an identical replay."""

    def work(conn: Connection) -> Created:
        at = _now(conn, now)
        row = _row(spec, at)
        _check_dependencies(conn, row["id"], row["kind"], row["body"])
        # Two identical requests at once: one inserts, the other finds its row.
        if rows.add(conn, row):
            return Created(row, created=True)
        existing = rows.get(conn, spec["id"])
        assert existing is not None, "an id the insert found taken is stored"
        if _config(existing) != _config(row):
            raise DuplicateId(
                f"A schedule {spec['id']!r} already exists with a different body.",
                {"id": spec["id"]},
            )
        return Created(existing, created=False)

    created = database.transaction(engine, work)
    if created.created:
        row = created.schedule
        log.info("schedule %s created: %s, next firing %s", row["id"], _when(row), _next(row))
    return created


def _when(row: dict[str, Any]) -> str:
    if row["cron"] is not None:
        return f"cron {row['cron']!r} in {row['timezone']}"
    return f"every {row['interval_s']} s"


def _next(row: dict[str, Any]) -> str:
    return "none (paused)" if row["next_fire_at"] is None else iso(row["next_fire_at"])


def _now(conn: Connection, now: datetime | None) -> datetime:
    return (now or database.now(conn)).replace(microsecond=0)


def _row(spec: dict[str, Any], at: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": spec["id"],
        "cron": spec.get("cron"),
        "interval_s": spec.get("interval_s"),
        "timezone": spec.get("timezone", "UTC"),
        "kind": _kind(spec),
        "body": _body(spec),
        "catch_up": spec.get("catch_up", "skip"),
        "overlap": spec.get("overlap", "allow"),
        "paused": spec.get("paused", False),
        "anchor_at": at,
        "last_fire_at": None,
        "last_batch_id": None,
        "last_outcome": None,
        "last_error": None,
        "fired": 0,
        "skipped": 0,
        "missed": 0,
        "failed": 0,
        "version": 1,
        "created_at": at,
        "updated_at": at,
    }
    row["next_fire_at"] = None if row["paused"] else timing_of(row).after(at)
    return row


# What makes two creations the same schedule. Not `paused`: a deploy script creating it
# again finds it as it is, paused from the dashboard or not.
_CONFIG = ("cron", "interval_s", "timezone", "kind", "body", "catch_up", "overlap")


def _config(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in _CONFIG)


def get(engine: Engine, schedule_id: str) -> dict[str, Any]:
    """Return one schedule, or raise not_found."""
    with database.read(engine) as conn:
        row = rows.get(conn, _known(schedule_id))
    if row is None:
        raise _not_found(schedule_id)
    return row


def _not_found(schedule_id: str) -> NotFound:
    if _valid_id(schedule_id):
        return NotFound(f"No schedule {schedule_id!r}.", {"id": schedule_id})
    shown = repr(schedule_id[:40]) + ("..." if len(schedule_id) > 40 else "")
    rule = ID_MESSAGE.format(max=MAX_SCHEDULE_ID_LENGTH).removeprefix("Use ")
    return NotFound(f"No schedule {shown}; schedule ids use {rule}")


def _known(schedule_id: str) -> str:
    """Return a schedule id that could exist, or raise not_found without asking the
    database (a NUL, for one, is not even valid in PostgreSQL's text)."""
    if not _valid_id(schedule_id):
        raise _not_found(schedule_id)
    return schedule_id


def listing(engine: Engine, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Return a page of schedules by id, from the first after the cursor `after`."""
    if after is not None and not _valid_id(after):
        raise InvalidParameter(
            "The cursor is malformed; use the one the previous page gave (the URL of its Link "
            "header, or the CLI's --cursor line).",
            {"cursor": "Not a schedule id."},
        )
    with database.read(engine) as conn:
        return rows.page(conn, after, limit)


def edit(
    engine: Engine,
    schedule_id: str,
    changes: dict[str, Any],
    admission: Admission = OPEN,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Apply a validated edit; a new timing or a resume counts its firings from now."""

    def work(conn: Connection) -> dict[str, Any]:
        at = _now(conn, now)
        # Locked to the end: two edits (or an edit and a firing) take turns on PostgreSQL.
        row = rows.get(conn, _known(schedule_id), lock=True)
        if row is None:
            raise _not_found(schedule_id)
        new = dict(row)
        if "cron" in changes:
            new["cron"], new["interval_s"] = changes["cron"], None
        if "interval_s" in changes:
            new["cron"], new["interval_s"] = None, changes["interval_s"]
        if "task" in changes:
            new["kind"], new["body"] = "task", changes["task"]
        if "batch" in changes:
            new["kind"], new["body"] = "batch", changes["batch"]
        for name in ("timezone", "catch_up", "overlap", "paused"):
            if name in changes:
                new[name] = changes[name]
        if "task" in changes or "batch" in changes:
            details: dict[str, str] = {}
            _check_work({"id": schedule_id, new["kind"]: new["body"]}, details, admission)
            if details:
                raise ValidationFailed("The change is invalid.", details)
            _check_dependencies(conn, schedule_id, new["kind"], new["body"])
        # The same timing sent again keeps the schedule's rhythm.
        retimed = any(new[n] != row[n] for n in ("cron", "interval_s", "timezone"))
        resumed = row["paused"] and not new["paused"]
        if retimed:
            new["anchor_at"] = at
        if new["paused"]:
            new["next_fire_at"] = None
        elif retimed or resumed:
            new["next_fire_at"] = timing_of(new).after(at)
        new["updated_at"] = at
        values = {k: v for k, v in new.items() if k not in ("id", "version") and row[k] != v}
        changed = rows.change(conn, schedule_id, row["version"], values)
        assert changed, "the row is locked: no one else changed it"
        new["version"] = row["version"] + 1
        return new

    result: dict[str, Any] = database.transaction(engine, work)
    if "paused" in changes and len(changes) == 1:
        what = "paused" if changes["paused"] else "resumed"
    else:
        what = "changed (" + ", ".join(sorted(changes)) + ")"
    log.info("schedule %s %s: %s, next firing %s", schedule_id, what, _when(result), _next(result))
    return result


def delete(engine: Engine, schedule_id: str) -> None:
    """Delete a schedule; the tasks its firings created stay."""

    def work(conn: Connection) -> bool:
        return rows.remove(conn, _known(schedule_id))

    if not database.transaction(engine, work):
        raise _not_found(schedule_id)
    log.info("schedule %s deleted", schedule_id)


# -- firing ---------------------------------------------------------------------------


@dataclass
class Fired:
    """What one firer run did, for its metrics and its caller."""

    fired: list[tuple[str, datetime, int]] = field(default_factory=list)  # id, instant, tasks
    skipped: list[tuple[str, datetime]] = field(default_factory=list)
    missed: list[tuple[str, int]] = field(default_factory=list)  # id, how many
    failed: list[tuple[str, datetime, str]] = field(default_factory=list)
    lost: int = 0  # due schedules another instance (or an edit) handled first

    @property
    def created(self) -> int:
        """How many tasks the run created."""
        return sum(n for _, _, n in self.fired)


def fire_due(
    engine: Engine,
    now: datetime | None = None,
    *,
    admission: Admission = OPEN,
    limit: int = DUE_PER_RUN,
) -> Fired:
    """Fire every schedule due at `now` (None: the database's time), each in its own
    transaction, fenced so that no firing happens twice."""
    report = Fired()
    at = None
    for _ in range(MAX_PAGES):
        with database.read(engine) as conn:
            at = at or _now(conn, now)
            due = rows.due(conn, at, limit)
        for row in due:
            _fire_one(engine, admission, row, at, report)
        if len(due) < limit:
            break  # a handled schedule is due again only after `at`
    return report


@dataclass
class _Plan:
    run: list[datetime]
    missed: int
    next_at: datetime
    last_missed: datetime | None = None


def plan(row: dict[str, Any], now: datetime) -> _Plan:
    """Decide which due instants of a schedule run at `now`, and when it fires next.

    An instant late by less than the schedule's grace always runs: a firer a second
    behind, or an instance restarting, is not downtime. Those later than that are
    missed, but for what `catch_up` runs of them: none (skip), the latest if nothing is
    on time (last), or the latest of them up to N in all (N).
    """
    timing = timing_of(row)
    first: datetime = row["next_fire_at"]
    cut = now - timedelta(seconds=grace_s(row))  # on time from here on
    on_time = timing.last(max(first, cut), now, MAX_ON_TIME)
    late_end = cut - timedelta(seconds=1)
    late = timing.count(first, late_end) if first <= late_end else 0
    catch_up = row["catch_up"]
    if catch_up == "skip" or not late:
        wanted_late = 0
    elif catch_up == "last":
        wanted_late = 0 if on_time else 1
    else:
        wanted_late = max(0, int(catch_up) - len(on_time))
    caught = timing.last(first, late_end, wanted_late) if wanted_late else []
    missed = late - len(caught)
    last_missed = None
    if missed:
        last_missed = timing.latest(caught[0] - timedelta(seconds=1) if caught else late_end)
    return _Plan(caught + on_time, missed, timing.after(now), last_missed)


def grace_s(row: dict[str, Any]) -> int:
    """How late an instant may be and still run whatever `catch_up` says: a minute for a
    cron expression, the interval (from 10 s to a minute) for an interval."""
    if row["interval_s"] is None:
        return MAX_GRACE_S
    return min(MAX_GRACE_S, max(MIN_GRACE_S, row["interval_s"]))


def _fire_one(
    engine: Engine, admission: Admission, row: dict[str, Any], now: datetime, report: Fired
) -> None:
    decided = plan(row, now)
    outcomes: list[tuple[str, datetime, str | None]] = []

    def work(conn: Connection) -> bool:
        outcomes.clear()
        if not rows.hold(conn, row["id"], row["next_fire_at"], row["version"]):
            raise _Lost
        last_batch = row["last_batch_id"]
        counts = {"fired": 0, "skipped": 0}
        created: list[tuple[datetime, int]] = []
        for instant in decided.run:
            if row["overlap"] == "skip" and last_batch and rows.unfinished(conn, last_batch):
                counts["skipped"] += 1
                outcomes.append(("skipped", instant, None))
                continue
            batch_id = f"{row['id']}.{stamp(instant)}"
            n = _create(conn, admission, row, instant, batch_id)
            counts["fired"] += 1
            created.append((instant, n))
            outcomes.append(("fired", instant, None))
            last_batch = batch_id
        values = _recorded(row, decided, now, counts, last_batch, outcomes)
        faults.point("schedule.firing", schedule=row["id"])  # stored, not yet recorded
        if not rows.advance(conn, row["id"], row["next_fire_at"], row["version"], values):
            raise _Lost  # roll back what this transaction stored
        report.fired.extend((row["id"], i, n) for i, n in created)
        return True

    try:
        done = database.transaction(engine, work)
    except _Lost:
        done = False
    except ApiError as exc:
        # The firing's tasks cannot be stored (queue full, a dependency gone, an id
        # taken): record the failure and move on, fenced as a firing is.
        done = database.transaction(engine, _failure(row, decided, now, exc, outcomes))
        if done:
            report.failed.extend((row["id"], i, exc.code) for i in decided.run)
    if not done:
        report.lost += 1
        return
    report.skipped.extend((row["id"], i) for kind, i, _ in outcomes if kind == "skipped")
    if decided.missed:
        report.missed.append((row["id"], decided.missed))


class _Lost(Exception):
    """Another instance fired the schedule first, or it was edited or deleted meanwhile."""


def _create(
    conn: Connection, admission: Admission, row: dict[str, Any], instant: datetime, batch_id: str
) -> int:
    items = wanted(row["id"], row["kind"], row["body"], instant)
    admission.check_types(task["type"] for task in items)
    order = batch.creation_order(items)
    taken = tasks.existing(conn, [task["id"] for task in items])
    if taken:
        raise DuplicateId(
            f"The ids of the firing at {stamp(instant)} are taken by stored tasks.",
            {"ids": sorted(taken)},
        )
    new = batch.new_rows(conn, items, order, batch_id)
    admission.make_room(conn, (row["status"] for row in new))
    insert_tasks(conn, new)
    return len(new)


def _recorded(
    row: dict[str, Any],
    decided: _Plan,
    now: datetime,
    counts: dict[str, int],
    last_batch: str | None,
    outcomes: list[tuple[str, datetime, str | None]],
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "next_fire_at": decided.next_at,
        "fired": row["fired"] + counts["fired"],
        "skipped": row["skipped"] + counts["skipped"],
        "missed": row["missed"] + decided.missed,
        "last_batch_id": last_batch,
        "updated_at": now,
    }
    if outcomes:
        kind, instant, error = outcomes[-1]
        values |= {"last_fire_at": instant, "last_outcome": kind, "last_error": error}
    elif decided.missed:
        values |= {
            "last_fire_at": decided.last_missed,
            "last_outcome": "missed",
            "last_error": None,
        }
    return values


def _failure(
    row: dict[str, Any],
    decided: _Plan,
    now: datetime,
    exc: ApiError,
    outcomes: list[tuple[str, datetime, str | None]],
) -> Callable[[Connection], bool]:
    def work(conn: Connection) -> bool:
        values = {
            "next_fire_at": decided.next_at,
            "failed": row["failed"] + len(decided.run),
            "missed": row["missed"] + decided.missed,
            "last_fire_at": decided.run[-1] if decided.run else row["last_fire_at"],
            "last_outcome": "failed",
            "last_error": f"{exc.code}: {exc.message}"[:1000],
            "updated_at": now,
        }
        outcomes.clear()
        return rows.advance(conn, row["id"], row["next_fire_at"], row["version"], values)

    return work


# -- answers --------------------------------------------------------------------------


def shape(row: dict[str, Any]) -> dict[str, Any]:
    """Return a stored schedule as the API shows it."""
    timing = timing_of(row)
    upcoming = (
        [] if row["next_fire_at"] is None else timing.upcoming(row["next_fire_at"], SHOWN_FIRINGS)
    )
    out: dict[str, Any] = {
        "id": row["id"],
        "cron": row["cron"],
        "interval_s": row["interval_s"],
        "timezone": row["timezone"],
        row["kind"]: row["body"],
        "catch_up": int(row["catch_up"]) if row["catch_up"].isdigit() else row["catch_up"],
        "overlap": row["overlap"],
        "paused": row["paused"],
        "next_firings": [iso(moment) for moment in upcoming],
        "last_firing": None,
        "counts": {name: row[name] for name in ("fired", "skipped", "missed", "failed")},
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if row["last_outcome"] is not None:
        out["last_firing"] = {
            "at": None if row["last_fire_at"] is None else iso(row["last_fire_at"]),
            "outcome": row["last_outcome"],
            "batch_id": row["last_batch_id"] if row["last_outcome"] == "fired" else None,
            "error": row["last_error"],
        }
    return out


def iso(moment: datetime) -> str:
    """Write a stored (naive UTC) time as the API writes times."""
    return moment.isoformat(timespec="milliseconds") + "Z"
