import logging
import shlex
from contextlib import contextmanager
from typing import Any

from alembic import context
from flask import current_app
from sqlalchemy.exc import OperationalError

from app.config import ConfigError
from app.startup import fail
from app.storage import dbfaults


def refused_hint(reason: str, url: Any) -> str:
    """Say what to do when the server refuses the login of `url` for `reason`. A name the
    URL leaves out comes from libpq's defaults (PGDATABASE, PGUSER, the user's name)."""
    if reason == "no_such_database":
        if not url.database:
            return "create the database libpq's defaults name (PGDATABASE), or name one"
        where = "".join(
            f"{flag} {shlex.quote(str(value))} "
            for flag, value in (("-h", url.host), ("-p", url.port), ("-U", url.username))
            if value
        )
        name = shlex.quote(url.database)
        return f"create {url.database} (`createdb {where}{name}`) and run this again"
    if reason == "no_such_role":
        role = f"the role {url.username}" if url.username else "the role (PGUSER)"
        return f"create {role}, or name an existing one in DATABASE_URL"
    return "check the password in DATABASE_URL and the server's pg_hba.conf"


# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Logging is the app's (LOG_FORMAT, set up by create_app): migration lines are written
# like every other log line, as JSON with LOG_FORMAT=json.
logging.getLogger("alembic").setLevel(logging.INFO)
logging.getLogger("flask_migrate").setLevel(logging.INFO)
logger = logging.getLogger("alembic.env")


def get_engine():
    return current_app.extensions["migrate"].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace("%", "%%")
    except AttributeError:
        return str(get_engine().url).replace("%", "%%")


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=get_metadata(), literal_binds=True)

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = current_app.extensions["migrate"].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()
    try:
        connection = connectable.connect()
    except OperationalError as exc:
        # One line, as for a bad setting: the server refuses this login (no such database
        # or role, the password), or the address is wrong or the database is down.
        fault = dbfaults.classify(exc)
        if fault is not None and fault.kind is dbfaults.Kind.REFUSED:
            hint = refused_hint(fault.reason, connectable.url)
            fail(ConfigError(f"DATABASE_URL: {fault.problem}; {hint}"))
        cause = str(exc.orig or exc).strip().splitlines()
        fail(
            ConfigError(
                f"DATABASE_URL: cannot connect to the database ({cause[0] if cause else exc}); "
                "check the address, or start the database and run this again"
            )
        )

    # On SQLite the upgrade holds the write lock from its first statement, waiting for it
    # as long as any writer does: begun deferred, it read the schema's revision, and a
    # write committed by a running instance meanwhile made its first change fail at once
    # ("database is locked").
    connection = connection.execution_options(sqlite_begin="IMMEDIATE")
    if connection.dialect.name == "postgresql":
        _require_a_schema(connection)
    with connection, _sqlite_settings_for_revisions(connection):
        context.configure(connection=connection, target_metadata=get_metadata(), **conf_args)

        with context.begin_transaction():
            context.run_migrations()


@contextmanager
def _sqlite_settings_for_revisions(connection):
    """On SQLite, leave foreign keys unenforced and temporary data on disk while the
    revisions run.

    A revision that builds a table again drops the old one: enforced, SQLite would delete
    the rows that refer to it (ON DELETE CASCADE), and the drop's statement journal, kept
    in memory as the service keeps it (temp_store=MEMORY), is as large as the table. Such
    a revision checks the keys itself before it commits. SQLite ignores the foreign keys
    setting inside a transaction: both are set on the driver's connection before the
    revisions' transaction begins, and set back after.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    driver = connection.connection.driver_connection
    driver.execute("PRAGMA foreign_keys=OFF")
    driver.execute("PRAGMA temp_store=FILE")
    try:
        yield
    finally:
        driver.execute("PRAGMA temp_store=MEMORY")
        driver.execute("PRAGMA foreign_keys=ON")


def _require_a_schema(connection):
    """Stop in one line when the session's search_path names no schema that exists: the
    tables would have nowhere to go, and PostgreSQL would say so in a traceback."""
    path = connection.exec_driver_sql("SHOW search_path").scalar()
    schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
    connection.rollback()
    if schema is None:
        connection.close()
        fail(
            ConfigError(
                f"DATABASE_URL: its search_path ({path}) names no schema that exists in the "
                "database; create it first (CREATE SCHEMA name), or name one that exists "
                "(docs/deployment.md, PostgreSQL schemas)"
            )
        )


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
