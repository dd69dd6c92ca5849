"""The count folder: keeps PostgreSQL's pending count deltas few, so counts stay quick."""

from __future__ import annotations

from datetime import datetime

from app.storage import counts
from app.storage.store import Store

# How often an instance folds. Between two folds the deltas grow by at most a row or two
# per statement that changed statuses; every count read adds them up.
FOLD_EVERY_S = 5.0


class CountFolder:
    """Moves the task count deltas into the rows per status (app/storage/counts.py)."""

    every_s = FOLD_EVERY_S

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def needed(self) -> bool:
        """Tell whether the backend appends deltas at all (PostgreSQL does, SQLite not)."""
        return self.store.engine.dialect.name == "postgresql"

    def run_once(self, now: datetime | None = None) -> int:
        """Fold once; return how many deltas went."""
        return counts.fold(self.store.engine)
