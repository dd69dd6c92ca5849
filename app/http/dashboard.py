"""The dashboard: HTML pages served by the app, and the JSON reads they need beyond the API.

The pages (the overview, a task, a batch, the schedules, the queues, the instances) are
plain HTML, CSS and JavaScript from `templates/dashboard` and `static/dashboard`; they call
the JSON API on the same origin, plus `GET /dashboard/counts` (tasks per status),
`GET /dashboard/graph/<id>` (a task's neighbourhood, both ways),
`GET /dashboard/batches/<id>` (a batch's whole graph and attempts) and
`GET /dashboard/actions/<id>` (whether cancel and retry would succeed).
With API_TOKEN set, those data routes need the token like the API (app/http/auth.py); the
pages and static files stay open, and the pages ask for the token once and keep it per tab.
A task page shows the task as the server reads it (or answers 404) only to a request that
may read data; otherwise its script fills it in once it has the token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from app import parts
from app.errors import InvalidParameter, NotFound
from app.http.auth import may_read
from app.http.inputs import named_statuses
from app.schemas import BatchSummaryOut, BatchViewAttemptOut, BatchViewTaskOut
from app.services import actions, batches
from app.services.reads import check_task_id, get_task
from app.statuses import Status
from app.storage import database
from app.storage.counts import by_status
from app.storage.graph import edges, has_task, neighbours, nodes

if TYPE_CHECKING:
    from sqlalchemy import Connection

bp = Blueprint("dashboard", __name__)

# How far the graph reaches from the task, each way, and how many tasks it shows at most.
GRAPH_LEVELS = 2
MAX_GRAPH_NODES = 200
# Every status, in their order: the counts and the legend of the pages.
STATUSES = [s.value for s in Status]

summary_out = BatchSummaryOut()
view_task_out = BatchViewTaskOut(many=True)
view_attempt_out = BatchViewAttemptOut(many=True)


@bp.get("/")
def index() -> str:
    """The overview: counts by status and the task table, filtered as the URL says."""
    status = request.args.get("status", "").strip()
    wanted = status.upper() if status.isascii() else status
    # One or several, as the API reads them: several are one more choice of the filter.
    named, unknown = named_statuses(status)
    known = bool(named) and not unknown
    if known:
        wanted = ",".join(named)
    return render_template(
        "dashboard/index.html",
        statuses=STATUSES,
        wanted_status=wanted,
        several_statuses=wanted if known and len(named) > 1 else None,
        # An unknown status is said back only as plain printable text, and short.
        shown_status=_shown(wanted) if wanted and not known else None,
        task_type=request.args.get("type", ""),
        batch_id=request.args.get("batch_id", ""),
    )


def _shown(value: str, most: int = 32) -> str:
    """Return `value` to show in a page: printable ASCII only, cut to `most` characters."""
    if not (value.isascii() and value.isprintable()):
        return ""
    return value if len(value) <= most else value[: most - 1] + "\u2026"


@bp.get("/schedules")
def schedules_page() -> str:
    """The schedules: next and last firings, counts, pause and resume (from the API)."""
    return render_template("dashboard/schedules.html")


@bp.get("/queues")
def queues_page() -> str:
    """The queues: tasks by status, limits to set, pause and resume (from the API)."""
    return render_template("dashboard/queues.html")


@bp.get("/instances")
def instances_page() -> str:
    """The scheduler instances: host, heartbeat, state and load of each (from the API)."""
    return render_template("dashboard/instances.html")


@bp.get("/tasks/<task_id>")
def task_page(task_id: str) -> str | tuple[str, int]:
    """One task: its details, its blockers, its actions and its dependency graph."""
    if not may_read(current_app.config["API_TOKEN"]):
        return render_template(
            "dashboard/task.html", task_id=task_id, task=None, can=None, statuses=STATUSES
        )
    engine = parts.engine()
    try:
        task = get_task(engine, task_id)
        can = actions.choices(engine, task_id)
    except NotFound:
        return render_template("dashboard/missing.html", task_id=task_id), 404
    return render_template(
        "dashboard/task.html", task_id=task_id, task=task, can=can, statuses=STATUSES
    )


@bp.get("/batches/<batch_id>")
def batch_page(batch_id: str) -> str | tuple[str, int]:
    """A batch: its whole graph by layer, live, with counts, critical path and timeline.

    To a request that may read data, an unknown batch is a 404 page; otherwise the page's
    script asks for the token, then says so itself."""
    missing = False
    if may_read(current_app.config["API_TOKEN"]):
        try:
            batches.summary(parts.engine(), batch_id)
        except (NotFound, InvalidParameter):
            missing = True
    page = render_template(
        "dashboard/batch.html", batch_id=batch_id, statuses=STATUSES, missing=missing
    )
    return (page, 404) if missing else page


@bp.get("/dashboard/counts")
def counts() -> Response:
    """Return `{status: count}` for every status, zeros included, exact, from the counts
    the triggers keep (no scan of the tasks)."""
    with database.read(parts.engine()) as conn:
        found = by_status(conn)
    return jsonify(found)


@bp.get("/dashboard/actions/<task_id>")
def task_actions(task_id: str) -> Response:
    """Return `{id, status, cancel, retry, retry_instead}`: which actions would succeed now."""
    return jsonify(actions.choices(parts.engine(), task_id))


@bp.get("/dashboard/graph/<task_id>")
def graph(task_id: str) -> Response:
    """Return the task, its dependencies and its dependents up to two levels each way.

    `edges` are `[dependency, dependent]` pairs between the returned nodes; `truncated`
    says the neighbourhood had more than `MAX_GRAPH_NODES` tasks and some were left out.
    """
    with database.read(parts.engine()) as conn:
        return jsonify(neighbourhood(conn, task_id))


@bp.get("/dashboard/batches/<batch_id>")
def batch_view(batch_id: str) -> Response:
    """Return what the batch page draws: `batch` (its summary), `tasks` (at most `limit`,
    in submission order; `truncated` says there are more), `edges` among them as
    `[dependency, dependent]`, `attempts` that ended (for the timeline) and
    `events_after`, the event number its stream starts after."""
    found = batches.view(parts.engine(), batch_id)
    found["batch"] = summary_out.dump(found["batch"])
    found["tasks"] = view_task_out.dump(found["tasks"])
    found["attempts"] = view_attempt_out.dump(found["attempts"])
    return jsonify(found)


def neighbourhood(conn: Connection, task_id: str) -> dict[str, Any]:
    """Collect the nodes (nearest first) and the edges among them."""
    check_task_id(task_id)
    if not has_task(conn, task_id):
        raise NotFound(f"No task has the id {task_id!r}.", {"id": task_id})
    order = [task_id]
    seen = {task_id}
    truncated = False
    up, down = [task_id], [task_id]
    for _ in range(GRAPH_LEVELS):
        up, full_up = _step(conn, up, seen, order, towards_dependencies=True)
        down, full_down = _step(conn, down, seen, order, towards_dependencies=False)
        truncated = truncated or full_up or full_down
    return {
        "nodes": nodes(conn, order),
        "edges": edges(conn, order),
        "truncated": truncated,
    }


def _step(
    conn: Connection,
    frontier: list[str],
    seen: set[str],
    order: list[str],
    *,
    towards_dependencies: bool,
) -> tuple[list[str], bool]:
    """Add the next level one way; return it and whether the node limit cut it short."""
    found: list[str] = []
    if not frontier:
        return found, False
    room = MAX_GRAPH_NODES - len(order)
    # One more than there is room for, beyond what is already seen, tells a cut.
    limit = room + len(seen) + 1
    for other in neighbours(conn, frontier, towards_dependencies=towards_dependencies, limit=limit):
        if other in seen:
            continue
        if len(order) >= MAX_GRAPH_NODES:
            return found, True
        seen.add(other)
        order.append(other)
        found.append(other)
    return found, False
