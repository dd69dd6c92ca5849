"""API_TOKEN checks shared by the app's routes and the scheduler's metrics endpoint."""

from __future__ import annotations

import hashlib
import hmac

# What every refusal says, whatever was sent; the token itself is never echoed.
MESSAGE = (
    "This server needs its API token: send Authorization: Bearer <token> "
    "with the value of its API_TOKEN setting."
)


def digest(value: bytes) -> bytes:
    """Return a fixed-length digest: comparing these keeps the token's length out of timing."""
    return hashlib.sha256(value).digest()


def carries(authorization: str, expected: bytes) -> bool:
    """Tell whether an Authorization header carries the token whose digest is `expected`."""
    scheme, _, credentials = authorization.partition(" ")
    given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    # Always one digest and one comparison, whether anything was sent or not.
    ok = hmac.compare_digest(digest(given), expected)
    return bool(given) and ok
