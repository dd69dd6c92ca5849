"""Read a JSON request body strictly: type, size, encoding, depth and numbers."""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from werkzeug.exceptions import ClientDisconnected

from app.errors import BodyTooLarge, InvalidJson, UnsupportedMediaType

MAX_DEPTH = 32
MAX_INTEGER = 2**63 - 1
# Digits of the largest 64-bit integer; int() is never asked to convert a longer one.
MAX_DIGITS = len(str(MAX_INTEGER))
UTF8_BOM = b"\xef\xbb\xbf"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(raw: str) -> float:
    value = float(raw)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {raw[:20]} does not fit in a double")
    return value


def _parse_int(raw: str) -> int:
    digits = raw.lstrip("-")
    # Checked before int(): Python refuses over 4,300 digits with a message about itself.
    if len(digits) > MAX_DIGITS or not -MAX_INTEGER - 1 <= int(raw) <= MAX_INTEGER:
        shown = raw if len(raw) <= 24 else f"{raw[:20]}... ({len(digits):,} digits)"
        raise ValueError(f"the integer {shown} does not fit in 64 bits")
    return int(raw)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {duplicate[:64]!r} appears twice in one object")
    return result


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Tell whether `value` nests deeper than `limit`, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, (dict, list))
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return False


def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """Return the request's JSON object or raise the error the client should see."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as JSON with Content-Type: application/json.")
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"The request body is larger than {max_bytes} bytes.")
    # One byte past the limit: a streamed (chunked) body is cut where the limit is, so
    # only a longer read can tell a body that is too large from one that just fits.
    request.max_content_length = max_bytes + 1
    try:
        raw = request.get_data(cache=True)
    except ClientDisconnected:
        raise InvalidJson(
            "The request body ended before the length its Content-Length header announced."
        ) from None
    if len(raw) > max_bytes:
        raise BodyTooLarge(f"The request body is larger than {max_bytes} bytes.")
    if not raw.strip():
        raise InvalidJson("The request body is empty; send a JSON object.")
    if raw.startswith(UTF8_BOM):
        raise InvalidJson("The body starts with a byte order mark; send UTF-8 JSON without one.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("The request body is not valid UTF-8.") from None
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_object,
        )
    except RecursionError:
        raise InvalidJson(f"The JSON nests deeper than {MAX_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"The body is not valid JSON: {exc.msg} at position {exc.pos}.") from None
    except ValueError as exc:
        raise InvalidJson(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise InvalidJson("The body must be a JSON object.")
    if _depth_exceeds(value, MAX_DEPTH):
        raise InvalidJson(f"The JSON nests deeper than {MAX_DEPTH} levels.")
    return value
