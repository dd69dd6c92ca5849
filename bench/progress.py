"""Progress lines on stderr, timed from the start of the run, and the run's time budget."""

from __future__ import annotations

import sys
import time

STARTED = time.monotonic()
# Seconds after STARTED beyond which no further repeat starts (set from the options).
BUDGET = [420.0]


def log(message: str) -> None:
    """Print progress to stderr, with the time since the start."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def over_budget() -> bool:
    """Tell whether the run has used its time budget."""
    return time.monotonic() - STARTED > BUDGET[0]
