"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, and `flask ...` commands.

Importing this module builds the app but starts no scheduler: gunicorn's
`post_worker_init` hook (gunicorn.conf.py) starts it in the serving process, and so does
`flask run` in the process that serves (not in the reloader's watching parent).
"""

from app import create_app
from app.cli import devserver

app = create_app()

if devserver.serving():
    devserver.start(app, app.config["SHUTDOWN_GRACE_S"])
