"""Sizes and page limits that the API, the CLI and the services must agree on."""

from __future__ import annotations

# A request body: one task, or a whole batch.
MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH_BYTES = 32 * 1024 * 1024

# Tasks per page of `GET /api/tasks` and `flask tasks list`.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Queues at most: a claim walks each open queue's part of the ready index in turn.
MAX_QUEUES = 200
