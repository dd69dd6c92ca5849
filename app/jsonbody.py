"""Parse a JSON body strictly: size, encoding, depth, numbers and duplicate keys."""

from __future__ import annotations

import json
from typing import Any

from app.errors import BodyTooLarge, InvalidJson

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


def json_size(value: Any) -> int:
    """Return the bytes of `value` as compact UTF-8 JSON, which the size limits count;
    raise TypeError or ValueError for what JSON cannot hold (NaN and Infinity included)."""
    return len(
        json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    )


def parse_json_object(raw: bytes, max_bytes: int, shape: str = "") -> dict[str, Any]:
    """Return the JSON object in `raw` or raise the error the client should see; `shape`
    shows the object expected, to one who sent something else."""
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
        raise InvalidJson(f"The body must be a JSON object{f': {shape}' if shape else ''}.")
    if _depth_exceeds(value, MAX_DEPTH):
        raise InvalidJson(f"The JSON nests deeper than {MAX_DEPTH} levels.")
    return value
