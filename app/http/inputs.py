"""What every route reads from a request: its query parameters, its JSON body, a page size."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

from flask import request
from werkzeug.exceptions import ClientDisconnected

from app.errors import (
    ApiError,
    BodyTooLarge,
    InvalidJson,
    InvalidParameter,
    NotFound,
    UnsupportedMediaType,
)
from app.jsonbody import parse_json_object
from app.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from app.services.reads import is_identifier
from app.statuses import Status

CUT_SHORT = (
    "The request body ended (or stopped arriving) before the length its Content-Length "
    "header announced."
)


def only_parameters(*allowed: str, listed: Collection[str] = ()) -> None:
    """Refuse a query parameter the route does not take, and one given more than once
    (read, only its first value would count: `?status=QUEUED&status=RUNNING` would list
    the queued tasks alone). Those `listed` take several values, comma-separated."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise InvalidParameter(
            f"Unknown query parameter {unknown[0]!r}; this route accepts "
            + (", ".join(allowed) if allowed else "none")
            + ".",
            {name: "Unknown parameter." for name in unknown},
        )
    repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
    if repeated:
        hint = " with its values comma-separated" if repeated[0] in listed else ""
        raise InvalidParameter(
            f"The query parameter {repeated[0]!r} is given more than once; give it once{hint}.",
            {name: "Given more than once." for name in repeated},
        )


def no_body(hint: str = "") -> None:
    """Refuse a body on a route that takes none (an empty JSON object is accepted): what
    it holds would be ignored. `hint` says where such fields go instead."""
    length = request.content_length
    raw = (
        b"x" * 65 if length is not None and length > 64 else _read(lambda: request.stream.read(65))
    )
    if length is not None and len(raw) < length:
        raise InvalidJson(CUT_SHORT)
    if raw.strip() and raw.strip() != b"{}" and not _empty_object(raw):
        raise InvalidParameter(
            f"This route takes no body; send none (or {{}}).{f' {hint}' if hint else ''}",
            {"body": "Not taken here."},
        )


def _empty_object(raw: bytes) -> bool:
    """Tell whether `raw` is an empty JSON object, however spaced (`{ }`, over two lines)."""
    try:
        return json.loads(raw) == {}
    except ValueError:  # not JSON, or not UTF-8
        return False


def _read(read: Callable[[], bytes]) -> bytes:
    """Read the body, turning a client that went away or broke the body's framing into
    the client's error: gunicorn reads a chunked body as it is asked for, and raises its
    parse errors (a bad chunk size, a missing terminator) from the read."""
    try:
        return read()
    except ClientDisconnected:  # closed, or silent for CLIENT_TIMEOUT_S
        raise InvalidJson(CUT_SHORT) from None
    except Exception as exc:
        if type(exc).__module__ != "gunicorn.http.errors":
            raise
        raise ApiError(f"The request body's framing is malformed: {exc}.") from None


def json_body(max_bytes: int, shape: str = "") -> dict[str, Any]:
    """Return the request's JSON object or raise the error the client should see (showing
    `shape`, the object expected, to a client that sent another kind of value)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as JSON with Content-Type: application/json.")
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMediaType(
            f"Send the body as UTF-8 JSON: charset={charset[:40]} is not read here."
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"The request body is larger than {max_bytes} bytes.")
    # One byte past the limit: a streamed (chunked) body is cut where the limit is, so
    # only a longer read can tell a body that is too large from one that just fits.
    request.max_content_length = max_bytes + 1
    raw = _read(lambda: request.get_data(cache=True))
    if request.content_length is not None and len(raw) < request.content_length:
        # gunicorn ends the stream where the client stopped sending, without an error.
        raise InvalidJson(CUT_SHORT)
    return parse_json_object(raw, max_bytes, shape)


def page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    # str.isdigit alone accepts "²", which int() refuses; the length spares int() huge input.
    whole = raw.isascii() and raw.isdigit()
    if not whole or len(raw) > 4 or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        why = "Out of range." if whole else "Not a whole number."
        message = f"limit must be an integer from 1 to {MAX_PAGE_SIZE}."
        raise InvalidParameter(message, {"limit": why})
    return int(raw)


def no_encoded_slash() -> None:
    """Refuse a path that holds an encoded slash (`%2F`) as not_found, before routing
    matters: no id or name may hold a slash, and the server decodes it before routing, so
    `/api/tasks/a%2Fstatus` would otherwise reach task a's status."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    if "%2f" in raw.split("?", 1)[0].lower():
        raise NotFound(
            "No route or task has this path: it holds an encoded slash (%2F), which no id "
            "or name may hold."
        )


def listed(name: str, raw: str | None) -> tuple[str, ...]:
    """Read a parameter that takes several names, comma-separated (none: empty)."""
    if raw is None:
        return ()
    values = tuple(v for v in raw.split(",") if v)
    if not values or len(values) > 20 or not all(is_identifier(v, 64) for v in values):
        raise InvalidParameter(
            f"{name} takes 1 to 20 comma-separated names of at most 64 characters.",
            {name: "Bad list."},
        )
    return values


def statuses(raw: str | None) -> tuple[str, ...]:
    """Read `status`: one or more statuses, comma-separated, as `named_statuses` reads
    them; refuse a list naming no status, or an unknown one."""
    if raw is None:
        return ()
    named, unknown = named_statuses(raw)
    if unknown or not named:
        said = f"Unknown status {unknown[0][:32]!r}" if unknown else "No status given"
        raise InvalidParameter(
            f"{said}; use one of {', '.join(Status)} (several comma-separated).",
            {"status": "Unknown status."},
        )
    return named


def named_statuses(raw: str) -> tuple[tuple[str, ...], list[str]]:
    """Return the statuses `raw` names, comma-separated (blanks around each, and empty
    ones, aside), in any case (only ASCII folds, so `ß` never becomes `SS`), each once in
    the order given; and the names given that are no status."""
    given = [v.strip(" \t") for v in raw.split(",") if v.strip(" \t")]
    folded = [v.upper() if v.isascii() else v for v in given]
    unknown = [v for v, f in zip(given, folded, strict=True) if f not in Status.__members__]
    return tuple(dict.fromkeys(f for f in folded if f in Status.__members__)), unknown
