"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, and `flask ...` commands.

Importing this module builds the app but starts no scheduler: gunicorn's
`post_worker_init` hook (gunicorn.conf.py) starts it in the serving process, and so does
`flask run` in the process that serves (not in the reloader's watching parent). A bad
setting stops the process with one line and exit status 2 (`flask ...` commands load
the app from here too).
"""

import sys

from app import create_app
from app.cli import devserver
from app.config import ConfigError
from app.startup import error_line, fail

try:
    app = create_app()
except ConfigError as error:
    if "gunicorn.arbiter" not in sys.modules:
        fail(error)
    # A gunicorn worker: the master checked the settings before it started, so they changed
    # since. Exiting here would only make the master start another worker; on this error
    # gunicorn prints the line and halts.
    from gunicorn.errors import AppImportError

    raise AppImportError(error_line(error)) from None

if devserver.running() and app.config["LOG_FORMAT"] == "json":
    devserver.log_banner()
if devserver.serving():
    devserver.start(app, app.config["SHUTDOWN_GRACE_S"])
elif devserver.running():  # the reloader's watching parent
    devserver.forward_interrupts()
