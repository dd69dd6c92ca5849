"""The old name of `tests.support.servers`, kept for scripts/crash_loop.py, which imports it.

Nothing in tests/ imports this module: delete it once the script imports
`tests.support.servers`.
"""

from tests.support.servers import Launcher, Server, free_port, group_pids, run_flask

__all__ = ["Launcher", "Server", "free_port", "group_pids", "run_flask"]
