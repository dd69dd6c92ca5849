"""The old name of `tests.support.ledger_handlers`, kept for scripts/crash_loop.py (which
runs the service with `TASK_HANDLERS=tests.ledger_handlers`) and scripts/crash_audit.py.

Nothing in tests/ uses this name: delete it once the scripts name
`tests.support.ledger_handlers`.
"""

from tests.support.ledger_handlers import fails_at, register

__all__ = ["fails_at", "register"]
