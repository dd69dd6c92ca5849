"""Keep a task's result as its handler returned it on SQLite: the column declared TEXT.

SQLite gives a column declared `JSON` numeric affinity: a result that is a bare number,
written as JSON text, was stored as a number. A whole number beyond 64 bits came back as
a float with another value (`2**63` as `9.223372036854776e+18`), and `3.0` as `3`. Inside
an object or a list every value was kept. Declared TEXT, the column keeps the text.

SQLite cannot change a column's declared type in place: this revision builds the table
again, as SQLite's documentation describes. It copies `tasks` into a new table whose only
difference is that declaration, drops the old one, renames the new one, and makes the
old one's indexes and triggers again from their stored definitions. Foreign keys are not
enforced while it runs (migrations/env.py), or dropping `tasks` would delete every
dependency edge and ended attempt with it; it checks them itself before it commits.

Results stored as numbers already are rewritten as JSON text: whole numbers keep their
value, and a number stored as a float is written as Python reads it (the digits of the
value it was changed to; the value it had is gone).

On PostgreSQL nothing changes: `json` keeps the text it is given.

The revision runs in one transaction holding the write lock, and needs room for a second
copy of `tasks` while it runs; it takes seconds per million stored tasks. Stop the
instances first, as for the revisions before it. A script (`--sql`) cannot be written for
SQLite: the new table is made from the old one's stored definition, which only a
connection can read.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import json
import re

from alembic import context, op

from app.config import ConfigError
from app.startup import fail

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# The declaration of `result` in the stored CREATE TABLE statement, as SQLAlchemy writes
# it (a line of its own), with the type to change.
_RESULT = r"(\n\s*result\s+){}(\s*,)"


def upgrade():
    _rebuild("JSON", "TEXT")


def downgrade():
    _rebuild("TEXT", "JSON")


def _rebuild(old, new):
    """Build `tasks` again on SQLite with `result` declared `new` instead of `old`."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if context.is_offline_mode():
        fail(
            ConfigError(
                "--sql: revision 0014 builds the tasks table again from its stored "
                "definition on SQLite, which a script cannot read; run `flask db upgrade` "
                "(or `downgrade`) on the database itself"
            )
        )
    run = bind.exec_driver_sql
    (table,) = run("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tasks'").one()
    made, changed = re.subn(_RESULT.format(old), rf"\g<1>{new}\g<2>", table, count=1)
    if not changed:
        if re.search(_RESULT.format(new), table):
            return  # declared so already (made by this version's models)
        raise RuntimeError(f"revision 0014 cannot find `result {old}` in the tasks table")
    made = re.sub(r"^CREATE TABLE\s+\"?tasks\"?", "CREATE TABLE tasks_rebuilt", made, count=1)
    kept = run(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'tasks'"
        " AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name"
    ).all()
    broken = _broken_keys(run)  # already, by hand: not this revision's to mend
    run(made)
    run("INSERT INTO tasks_rebuilt SELECT * FROM tasks")
    if new == "TEXT":
        _write_floats_exactly(bind.connection.driver_connection)
    run("DROP TABLE tasks")  # its indexes and triggers go with it
    run("PRAGMA legacy_alter_table = ON")  # rename this table only, nothing else's text
    try:
        run("ALTER TABLE tasks_rebuilt RENAME TO tasks")
    finally:
        run("PRAGMA legacy_alter_table = OFF")
    for (sql,) in kept:
        run(sql)
    added = _broken_keys(run) - broken
    if added:
        raise RuntimeError(f"revision 0014 would break a foreign key: {sorted(added)[0]}")
    stats = run("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'")
    if stats.first() is not None:
        run("ANALYZE tasks")  # the dropped table's statistics went with it


def _write_floats_exactly(driver):
    """Write each float stored in `tasks` into the copy as Python reads it: SQLite
    copies a float into TEXT with 15 digits. Read a thousand at a time, so that memory
    stays flat whatever the number of them."""
    floats = driver.execute("SELECT seq, result FROM tasks WHERE typeof(result) = 'real'")
    while chunk := floats.fetchmany(1000):
        driver.executemany(
            "UPDATE tasks_rebuilt SET result = ? WHERE seq = ?",
            [(json.dumps(value), seq) for seq, value in chunk],
        )


def _broken_keys(run):
    """The rows whose foreign key names a row that does not exist (table, rowid, parent)."""
    return {tuple(row[:3]) for row in run("PRAGMA foreign_key_check")}
