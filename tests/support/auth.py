"""The API token of the tests, and the Authorization headers that carry it or fail to."""

from __future__ import annotations

import base64

TOKEN = "s3cret-Token_0123456789abcdef"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
REFUSED = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer " + "x" * len(TOKEN)},
    "a token of another length": {"Authorization": f"Bearer {TOKEN}-and-more"},
    "a prefix of the token": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "basic auth": {"Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()},
    "the bare token": {"Authorization": TOKEN},
    "an empty bearer": {"Authorization": "Bearer "},
    "non-ascii": {"Authorization": "Bearer t\u00f6ken"},
}
