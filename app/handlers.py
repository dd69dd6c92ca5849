"""The task-type registry, handler modules, the context a handler gets, and the built-in
simulated handler."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from marshmallow import ValidationError

from app.config import ConfigError
from app.dag import topological_order
from app.errors import UnknownTaskType
from app.schemas import ID_MESSAGE, ID_PATTERN, MAX_TYPE_LENGTH, TaskIn, task_details

SIMULATE = "simulate"
# What a task type may be: what the API accepts in `type`.
_TYPE = re.compile(ID_PATTERN)
# Tasks one attempt may add to the graph (they are created with its completion).
MAX_ADDED_TASKS = 10_000
# The results of a task's dependencies, as JSON, that `dependency_results` loads at most.
MAX_DEPENDENCY_RESULTS_BYTES = 4 * 1024 * 1024

_task_in = TaskIn()


class HandlerFailed(Exception):
    """Raised by a handler to fail its attempt with a message for the task's `error`."""


def ignore_progress(percent: int) -> None:
    """A context's progress hook when nothing records progress."""
    return None


def no_dependency_results() -> dict[str, Any]:
    """A context's read of its dependencies' results when nothing reads them."""
    return {}


@dataclass
class TaskContext:
    """What a handler receives: the task, its attempt, a cancel event, a progress hook,
    its dependencies' results, and a way to add tasks to the graph."""

    id: str
    type: str
    duration_ms: int
    payload: dict[str, Any]
    attempt: int
    cancel: threading.Event = field(default_factory=threading.Event)
    # Report 0..100; the scheduler records it as the task's `progress`.
    progress: Callable[[int], None] = ignore_progress
    # Reads `{dependency id: result}` from the database (the scheduler gives it).
    read_dependency_results: Callable[[], dict[str, Any]] = no_dependency_results
    # The tasks this attempt adds, loaded and checked; created with its completion.
    added: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def dependency_results(self) -> dict[str, Any]:
        """The results of this task's dependencies, by id (null for one that returned
        nothing or did not complete; absent for one retention removed). Read once, on
        first use, at most MAX_DEPENDENCY_RESULTS_BYTES of them (beyond: HandlerFailed)."""
        return self.read_dependency_results()

    def add_tasks(self, tasks: Iterable[dict[str, Any]]) -> list[str]:
        """Add tasks to the graph, created in the transaction that records this attempt's
        completion: if the attempt fails, or its completion is never recorded, none exist.

        Each task is a body as `POST /api/tasks` takes it (an id is generated when absent);
        its dependencies may name this task and the tasks it adds. This task's dependents
        wait for the added tasks too. Return their ids. Raises HandlerFailed for a task
        that is invalid, an id used twice, a dependency elsewhere, a cycle, or more than
        MAX_ADDED_TASKS in all (so the attempt fails, saying why).
        """
        if isinstance(tasks, dict | str | bytes) or not hasattr(tasks, "__iter__"):
            raise HandlerFailed("add_tasks takes a list (or another iterable) of task bodies.")
        loaded = [self._load_added(len(self.added) + k, t) for k, t in enumerate(tasks)]
        if len(self.added) + len(loaded) > MAX_ADDED_TASKS:
            raise HandlerFailed(f"An attempt may add at most {MAX_ADDED_TASKS} tasks.")
        taken = {t["id"] for t in self.added} | {self.id}
        for task in loaded:
            if task["id"] in taken:
                raise HandlerFailed(f"add_tasks: the id {task['id']!r} is used twice.")
            taken.add(task["id"])
        for task in loaded:
            elsewhere = [d for d in task.get("dependencies") or [] if d not in taken]
            if elsewhere:
                raise HandlerFailed(
                    f"add_tasks: task {task['id']!r} depends on {elsewhere[0]!r}; an added "
                    "task may depend only on the task adding it and the tasks it adds."
                )
        everything = [*self.added, *loaded]
        edges = {t["id"]: t.get("dependencies") or [] for t in everything}
        if len(topological_order([t["id"] for t in everything], edges)) < len(everything):
            raise HandlerFailed("add_tasks: the added tasks' dependencies form a cycle.")
        self.added.extend(loaded)
        return [task["id"] for task in loaded]

    @staticmethod
    def _load_added(index: int, task: Any) -> dict[str, Any]:
        if not isinstance(task, dict):
            raise HandlerFailed(f"add_tasks: task {index} is not a dict.")
        try:
            loaded: dict[str, Any] = _task_in.load(task)
        except ValidationError as exc:
            shown = json.dumps(task_details(exc))[:500]
            raise HandlerFailed(f"add_tasks: task {index} is invalid: {shown}") from None
        try:  # as the API reads JSON: no NaN or Infinity, which no database stores
            json.dumps(loaded.get("payload"), allow_nan=False)
        except ValueError:
            raise HandlerFailed(
                f"add_tasks: task {index}'s payload holds NaN or Infinity, which JSON has not."
            ) from None
        loaded.setdefault("id", uuid.uuid4().hex)
        return loaded


Handler = Callable[[TaskContext], Any]


# The simulated handler sleeps this long or less without waking on a cancel (which it
# sees as it wakes): waiting on the cancel event costs a thread twice the CPU time of a
# plain sleep, all of it holding the GIL, for a difference nobody could see.
UNINTERRUPTED_SLEEP_S = 0.02


def simulate(ctx: TaskContext) -> Any:
    """Sleep `duration_ms` (waking at once on cancel, but for the shortest sleeps); fail
    when `payload.fail` is true."""
    seconds = ctx.duration_ms / 1000
    if seconds <= UNINTERRUPTED_SLEEP_S:
        time.sleep(seconds)
        stopped = ctx.cancel.is_set()
    else:
        stopped = ctx.cancel.wait(seconds)
    if stopped:
        raise HandlerFailed("The task was asked to stop before it finished.")
    if ctx.payload.get("fail") is True:
        raise HandlerFailed("The simulated handler failed because payload.fail is true.")
    return None


class Registry:
    """Maps task types to handlers.

    With none registered (and not strict) every type runs the simulated handler, as the
    original service did. Once a handler is registered, or with STRICT_TASK_TYPES, only
    registered types and `simulate` are accepted, so real work is never silently replaced
    by a sleep.
    """

    def __init__(self, strict: bool = False) -> None:
        self._handlers: dict[str, Handler] = {}
        self._strict = strict

    def register(self, task_type: str, handler: Handler) -> None:
        """Make `handler` run every task of `task_type`; raise ValueError for a type that
        no task can name (or `simulate`, built in), TypeError for a handler that cannot
        be called."""
        if task_type == SIMULATE:
            raise ValueError(
                f"the type {SIMULATE!r} is built in (it sleeps duration_ms): name the "
                "handler's type otherwise"
            )
        if not (
            isinstance(task_type, str)
            and len(task_type) <= MAX_TYPE_LENGTH
            and _TYPE.match(task_type)
        ):
            raise ValueError(
                f"{task_type!r} cannot name a task type: " + ID_MESSAGE.format(max=MAX_TYPE_LENGTH)
            )
        if not callable(handler):
            raise TypeError(
                f"the handler of {task_type!r} is {type(handler).__name__!r}, not a function "
                "taking the task's context"
            )
        self._handlers[task_type] = handler

    @property
    def strict(self) -> bool:
        """Tell whether unknown types are refused."""
        return self._strict or bool(self._handlers)

    def registered(self) -> list[str]:
        """Return the types a handler was registered for, by name."""
        return sorted(self._handlers)

    def types(self) -> list[str]:
        """Return the accepted types, or an empty list when every type is accepted."""
        return sorted({*self._handlers, SIMULATE}) if self.strict else []

    def check(self, task_types: list[str]) -> None:
        """Raise `unknown_task_type` for types no handler runs."""
        if not self.strict:
            return
        unknown = sorted({t for t in task_types if t not in self._handlers and t != SIMULATE})
        if unknown:
            raise UnknownTaskType(
                f"No handler runs the task type {unknown[0]!r}; accepted types: "
                + ", ".join(self.types())
                + ".",
                {"unknown": unknown, "accepted": self.types()},
            )

    def resolve(self, task_type: str) -> Handler:
        """Return the handler for `task_type`, the simulated one when none is registered."""
        return self._handlers.get(task_type, simulate)


def load_modules(registry: Registry, modules: str) -> None:
    """Import each module named in `modules` (comma-separated) and let it register.

    Modules are looked for on the import path, then in the working directory.
    """
    names = [m.strip() for m in modules.split(",") if m.strip()]
    if names:
        _search_working_directory()
    owners: dict[str, str] = {}  # each type, and the module that registered it
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and exc.name != name and not name.startswith(exc.name + "."):
                # Found, but something it imports is not: not a matter of where it is.
                raise ConfigError(
                    f"TASK_HANDLERS module {name!r} failed to import: {_said(exc)}"
                ) from None
            message = (
                f"TASK_HANDLERS names {name!r}, which cannot be imported ({exc}): put the "
                "module in the directory the service starts from, on PYTHONPATH, or in an "
                "installed package, and list module paths comma-separated"
            )
            raise ConfigError(message) from None
        except (Exception, SystemExit) as exc:  # a SyntaxError, whatever its top level raised
            raise ConfigError(
                f"TASK_HANDLERS module {name!r} failed to import: {_said(exc)}"
            ) from None
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(
                f"TASK_HANDLERS module {name!r} has no register(registry) function: "
                "add one, or leave the module out of TASK_HANDLERS"
            )
        before = set(registry.registered())
        try:
            register(_Once(registry, owners, name))
        except ConfigError:
            raise
        except (Exception, SystemExit) as exc:
            raise ConfigError(
                f"TASK_HANDLERS module {name!r}: register(registry) raised {_said(exc)}"
            ) from None
        owners.update((t, name) for t in set(registry.registered()) - before)


def _said(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return type(exc).__name__ + (f": {text[0][:300]}" if text else "")


class _Once:
    """The registry as a handler module sees it: a type another module registered
    already is refused, naming both modules (the later one would replace it unseen)."""

    def __init__(self, registry: Registry, owners: dict[str, str], module: str) -> None:
        self._registry = registry
        self._owners = owners
        self._module = module

    def register(self, task_type: str, handler: Handler) -> None:
        """Register `handler`, unless another module has the type."""
        owner = self._owners.get(task_type)
        if owner is not None and owner != self._module:
            raise ConfigError(
                f"TASK_HANDLERS modules {owner!r} and {self._module!r} both register the "
                f"task type {task_type!r}: one handler runs a type; keep one of them"
            )
        self._registry.register(task_type, handler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def _search_working_directory() -> None:
    """Let a handler module beside the service import, whichever command started it.

    gunicorn and `flask --app <module>` put the directory they start from on the import
    path; `flask --app path/to/wsgi.py` puts the file's directory instead. Appended, the
    working directory never hides an installed module of the same name.
    """
    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path):
        sys.path.append(here)
