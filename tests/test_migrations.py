"""The migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app import create_app
from app.extensions import db


def test_upgrade_matches_the_models_and_downgrade_removes_them(database_url: str) -> None:
    app = create_app({"DATABASE_URL": database_url, "SCHEDULER_ENABLED": "false"})
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
            indexes = {i["name"] for i in inspect(conn).get_indexes("tasks")}
        assert diff == []
        assert {"ix_tasks_ready", "ix_tasks_running", "ix_tasks_status_seq"} <= indexes
        downgrade(revision="base")
        with db.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        db.engine.dispose()
