"""HTTP route of the event stream: task state changes as server-sent events."""

from __future__ import annotations

import re

from flask import Blueprint, Response, request

from app import parts
from app.errors import InvalidParameter
from app.http.inputs import listed, only_parameters, statuses
from app.services.reads import is_identifier
from app.services.streams import SEND_TIMEOUT_S
from app.storage.eventlog import Filters

bp = Blueprint("events", __name__, url_prefix="/api")

# An event number: digits only (one past any event number, 2**63 - 1 at most, counts as
# that: a stream from the newest event).
_NUMBER = re.compile(r"[0-9]{1,100}\Z")
_NEWEST = 2**63 - 1


@bp.get("/events")
def stream_events() -> Response:
    """Stream task state changes as they commit, from now or after `Last-Event-ID`."""
    only_parameters(
        "task", "task_id", "batch", "batch_id", "type", "status", listed=("type", "status")
    )
    filters = Filters(
        task_id=_identifier(*_either("task")),
        batch_id=_identifier(*_either("batch")),
        types=listed("type", request.args.get("type")),
        statuses=statuses(request.args.get("status")),
    )
    # Empty, or blanks alone: as if absent. Only HTTP's blanks are trimmed, as documented.
    last = (request.headers.get("Last-Event-ID") or "").strip(" \t") or None
    if last is not None and not _NUMBER.match(last):
        raise InvalidParameter(
            "Last-Event-ID must be the number of an event (the `id` of one this stream sent).",
            {"Last-Event-ID": "Must be digits."},
        )
    if request.method == "HEAD":  # the headers a stream would have, and no stream
        return Response(mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
    chunks = parts.streams().start(filters, None if last is None else min(int(last), _NEWEST))
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:  # a client that stops reading must not hold the thread for ever
        sock.settimeout(SEND_TIMEOUT_S)
    response = Response(chunks, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold events
    return response


def _either(name: str) -> tuple[str, str | None]:
    """Return the parameter given as `<name>_id` (the events' field, and GET /api/tasks's
    `batch_id`) or as `<name>`, and its value; refuse both given."""
    given = [n for n in (f"{name}_id", name) if n in request.args]
    if len(given) > 1:
        raise InvalidParameter(
            f"{name}_id and {name} are the same filter; give one of them.",
            {n: "Given twice under two names." for n in given},
        )
    found = given[0] if given else name
    return found, request.args.get(found)


def _identifier(name: str, raw: str | None) -> str | None:
    if raw is not None and not is_identifier(raw):
        raise InvalidParameter(
            f"{name} must be an id: letters, digits and . _ : - only, at most 128.",
            {name: "Not an id."},
        )
    return raw
