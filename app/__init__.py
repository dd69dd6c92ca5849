"""Task Scheduler: a persistent DAG task service with a REST API."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

from flask import Flask, Response, request

from app import events, logs, parts
from app.config import INSTANCE_FOLDER, Settings
from app.extensions import db, migrate
from app.handlers import Registry, load_modules
from app.http.auth import require_token
from app.http.errors import register_error_handlers
from app.http.inputs import no_encoded_slash
from app.http.jsonout import FastJSON
from app.runtime.metrics import Metrics
from app.runtime.scheduler import Scheduler
from app.services import fanout, schedules
from app.services.admission import Admission
from app.services.streams import Streams
from app.services.waiting import Waiters
from app.storage import database
from app.storage.store import Store

# Submissions up to the batch limit; each route enforces its own smaller limit.
MAX_CONTENT_LENGTH = 32 * 1024 * 1024
# What a browser client may read from an answer besides the body.
EXPOSED_HEADERS = "Location, Link, Retry-After, WWW-Authenticate"


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app; `environ` overrides the process environment (tests use it)."""
    app = Flask(__name__, instance_relative_config=True, instance_path=INSTANCE_FOLDER)
    merged = None if environ is None else {**os.environ, **environ}
    settings = Settings.from_env(merged)
    app.config.update(settings.to_flask())
    if not settings.database_url:
        os.makedirs(app.instance_path, exist_ok=True)
        url = "sqlite:///" + os.path.join(app.instance_path, "tasks.db")
        app.config["DATABASE_URL"] = url
    url = app.config["DATABASE_URL"]
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=database.engine_options(url, settings.max_concurrent_tasks),
        MAX_CONTENT_LENGTH=MAX_CONTENT_LENGTH,
    )
    app.json = FastJSON(app)
    app.json.sort_keys = False
    # An id with an encoded slash must not be redirected to another task's URL.
    app.url_map.merge_slashes = False
    logs.configure(settings.log_format)

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        database.configure_sqlite(engine, settings.sqlite_synchronous)
    else:
        database.configure_postgresql(engine, settings.lease_s)

    changes = events.attach(engine, events.Events(settings.log_format))
    store = Store(engine)
    registry = Registry(strict=settings.strict_task_types)
    load_modules(registry, settings.task_handlers)
    admission = Admission(
        registry,
        max_queued=settings.max_queued_tasks,
        retry_after_s=Admission.retry_after_for(settings.polling_interval_ms),
    )
    store.spawn = partial(fanout.spawn, admission=admission)
    metrics = Metrics(engine)
    scheduler = Scheduler(
        store,
        registry,
        max_concurrent=settings.max_concurrent_tasks,
        poll_interval_s=settings.polling_interval_ms / 1000,
        lease_s=settings.lease_s,
        retention_days=settings.retention_days,
        event_retention_s=settings.event_retention_s,
        metrics=metrics,
        fire=partial(schedules.fire_due, engine, admission=admission),
        queues=settings.scheduler_queues,
    )
    waiters = Waiters(
        engine,
        settings.waiting_capacity,
        recheck_s=settings.polling_interval_ms / 1000,
        report=metrics.waiting.set,
    )
    changes.watchers.append(waiters.changed)
    streams = Streams(
        engine,
        settings.stream_capacity,
        recheck_s=settings.polling_interval_ms / 1000,
        max_s=settings.event_stream_max_s,
    )
    changes.watchers.append(streams.changed)
    parts.install(
        app,
        store=store,
        registry=registry,
        admission=admission,
        metrics=metrics,
        scheduler=scheduler,
        waiters=waiters,
        streams=streams,
    )
    metrics.watch(scheduler.running_count)

    from app.cli import register_cli
    from app.http.apidocs import bp as apidocs_bp
    from app.http.batches import bp as batches_bp
    from app.http.dashboard import bp as dashboard_bp
    from app.http.events import bp as events_bp
    from app.http.instances import bp as instances_bp
    from app.http.ops import ops
    from app.http.queues import bp as queues_bp
    from app.http.schedules import bp as schedules_bp
    from app.http.tasks import bp

    app.register_blueprint(bp)
    app.register_blueprint(schedules_bp)
    app.register_blueprint(queues_bp)
    app.register_blueprint(batches_bp)
    app.register_blueprint(instances_bp)
    app.register_blueprint(events_bp)
    app.register_blueprint(ops)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(apidocs_bp)
    register_error_handlers(app)
    app.before_request(no_encoded_slash)
    register_cli(app)
    if settings.api_token:
        require_token(app, settings.api_token, settings.auth_ops_routes)
    _enable_cors(app, settings.cors_origins)
    return app


def _enable_cors(app: Flask, origins: str) -> None:
    allowed = [o.strip() for o in origins.split(",") if o.strip()]

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if "*" in allowed:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        else:
            return response
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = (
            "Content-Type, Authorization, Last-Event-ID"
        )
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return response


def start_scheduler(app: Flask) -> Scheduler | None:
    """Start the app's scheduler if it is enabled; call once per serving process."""
    if not app.config["SCHEDULER_ENABLED"]:
        return None
    scheduler = parts.scheduler(app)
    scheduler.start()
    return scheduler
