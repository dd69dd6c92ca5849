"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

Importing this module builds the app but starts no scheduler; gunicorn's
`post_worker_init` hook (gunicorn.conf.py) starts it in the serving process.
"""

from app import create_app

app = create_app()
