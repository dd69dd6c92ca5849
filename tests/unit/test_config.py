"""Settings: SPEC section 8 defaults, `.env` below the environment, clear errors."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

from app import config, create_app
from app.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_spec() -> None:
    settings = Settings.from_env({})
    assert settings.port == 3000
    assert settings.max_concurrent_tasks == 3
    assert settings.polling_interval_ms == 1000
    assert settings.scheduler_enabled is True
    assert settings.shutdown_grace_s == 25
    assert settings.sqlite_synchronous == "FULL"
    assert settings.cors_origins == "*"
    assert settings.lease_s == 30
    assert settings.metrics_port is None
    assert settings.metrics_host == "127.0.0.1"
    assert settings.host == "127.0.0.1"  # not every interface: the API may be open
    assert (settings.web_concurrency, settings.gunicorn_threads) == (1, 8)
    assert settings.gunicorn_access_log == ""


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PORT", "eighty", "PORT must be an integer"),
        ("PORT", "70000", "PORT must be between 1 and 65535"),
        ("MAX_CONCURRENT_TASKS", "0", "MAX_CONCURRENT_TASKS must be between"),
        ("POLLING_INTERVAL", "1.5", "POLLING_INTERVAL must be an integer"),
        ("SCHEDULER_ENABLED", "maybe", "SCHEDULER_ENABLED must be true or false"),
        ("SQLITE_SYNCHRONOUS", "OFF", "SQLITE_SYNCHRONOUS must be one of"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL must be a sqlite:// or postgresql://"),
        ("DATABASE_URL", "sqlite://instance/x.db", r"host \('instance'\), which it cannot have"),
        ("DATABASE_URL", "sqlite://tasks.db", r"sqlite:///relative/path.db \(three slashes"),
        ("METRICS_PORT", "0", "METRICS_PORT must be between 1 and 65535"),
        ("HOST", "localhost:3000/", "HOST must be an address or host name"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be between"),
        ("GUNICORN_THREADS", "many", "GUNICORN_THREADS must be an integer"),
        ("TASK_DATA_DIR", "/no/such/folder", "TASK_DATA_DIR must name an existing folder"),
        ("MAX_WAITING_REQUESTS", "-1", "MAX_WAITING_REQUESTS must be between 0 and"),
        ("MAX_WAITING_REQUESTS", "8", r"MAX_WAITING_REQUESTS must be below GUNICORN_THREADS \(8\)"),
    ],
)
def test_an_invalid_value_names_its_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "url",
    ["postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"],
)
def test_postgres_urls_use_psycopg(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == "postgresql+psycopg://u@h/db"


def test_dotenv_fills_in_what_the_environment_does_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("MAX_CONCURRENT_TASKS=7\nPOLLING_INTERVAL=250\n")
    monkeypatch.chdir(tmp_path)
    # A private copy: load_dotenv writes what it reads into os.environ.
    environ = {k: v for k, v in os.environ.items() if k != "MAX_CONCURRENT_TASKS"}
    monkeypatch.setattr(os, "environ", {**environ, "POLLING_INTERVAL": "500"})
    settings = Settings.from_env()
    assert settings.max_concurrent_tasks == 7
    assert settings.polling_interval_ms == 500


def test_the_default_database_is_a_sqlite_file_in_the_instance_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app({"SCHEDULER_ENABLED": "false"})
    assert app.config["DATABASE_URL"].startswith("sqlite:///")
    assert app.config["DATABASE_URL"].endswith("instance/tasks.db")
    app.extensions["store"].engine.dispose()


def _gunicorn_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dict:
    """Read gunicorn.conf.py as gunicorn does, in an environment holding only `env`."""
    monkeypatch.chdir(tmp_path)  # no `.env` to read
    monkeypatch.setattr(os, "environ", {"PATH": os.environ.get("PATH", ""), **env})
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_binds_127_0_0_1_port_3000_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = _gunicorn_settings(monkeypatch, tmp_path)
    assert conf["bind"] == "127.0.0.1:3000"
    assert (conf["workers"], conf["threads"], conf["accesslog"]) == (1, 8, None)


@pytest.mark.parametrize(
    ("host", "bind"), [("0.0.0.0", "0.0.0.0:8080"), ("::", "[::]:8080"), ("[::1]", "[::1]:8080")]
)
def test_gunicorn_binds_host_and_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str, bind: str
) -> None:
    assert _gunicorn_settings(monkeypatch, tmp_path, HOST=host, PORT="8080")["bind"] == bind


def test_a_sqlite_file_must_be_in_a_folder_that_exists(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "tasks.db"
    with pytest.raises(ConfigError, match="folder that does not exist"):
        Settings.from_env({"DATABASE_URL": f"sqlite:///{missing}"})
    present = f"sqlite:///{tmp_path / 'tasks.db'}"
    assert Settings.from_env({"DATABASE_URL": present}).database_url == present
    assert Settings.from_env({"DATABASE_URL": "sqlite://"}).database_url == "sqlite://"
    uri = f"sqlite:///file:{tmp_path / 'tasks.db'}?uri=true"  # a URI filename, as documented
    assert Settings.from_env({"DATABASE_URL": uri}).database_url == uri
    with pytest.raises(ConfigError, match="folder that does not exist"):
        Settings.from_env({"DATABASE_URL": f"sqlite:///file:{missing}?uri=true"})


@pytest.fixture
def project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A project folder of the test's own, with its instance folder; run from elsewhere."""
    folder = tmp_path / "project"
    (folder / "instance").mkdir(parents=True)
    monkeypatch.setattr(config, "PROJECT_FOLDER", str(folder))
    monkeypatch.setattr(config, "INSTANCE_FOLDER", str(folder / "instance"))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "instance").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    return folder


def test_a_relative_sqlite_path_is_from_the_project_folder_wherever_a_process_starts(
    project: Path,
) -> None:
    """The documented default, written out, names the default file (Flask-SQLAlchemy
    alone opened relative paths under instance/: instance/instance/tasks.db)."""
    default = Settings.from_env({"DATABASE_URL": "sqlite:///instance/tasks.db"}).database_url
    assert default == f"sqlite:///{project / 'instance' / 'tasks.db'}"
    uri = Settings.from_env({"DATABASE_URL": "sqlite:///file:x.db?uri=true&mode=rwc"})
    assert uri.database_url == f"sqlite:///file:{project / 'x.db'}?uri=true&mode=rwc"
    with pytest.raises(ConfigError, match=f"folder that does not exist \\({project}/data\\)"):
        Settings.from_env({"DATABASE_URL": "sqlite:///data/tasks.db"})
    app = create_app({"DATABASE_URL": "sqlite:///instance/tasks.db", "SCHEDULER_ENABLED": "0"})
    with app.app_context():
        assert app.extensions["store"].engine.url.database == str(project / "instance/tasks.db")


def test_a_relative_sqlite_path_is_refused_while_a_database_is_where_earlier_versions_were(
    project: Path,
) -> None:
    """Earlier versions opened sqlite:///tasks.db as instance/tasks.db: another file
    opened in the project's folder instead would hide every stored task. An empty file
    there (what `sqlite3 tasks.db` or `touch` leaves) is no database."""
    earlier = project / "instance" / "tasks.db"
    earlier.write_bytes(b"")  # empty: no database, so nothing to hide
    assert Settings.from_env({"DATABASE_URL": "sqlite:///tasks.db"}).database_url
    earlier.write_bytes(b"SQLite format 3\0")
    for there in (None, b""):
        if there is not None:
            (project / "tasks.db").write_bytes(there)
        with pytest.raises(ConfigError) as refused:
            Settings.from_env({"DATABASE_URL": "sqlite:///tasks.db"})
        assert f"no database is there, but one is at {earlier}" in str(refused.value)
        assert f"name that file (sqlite:///{earlier})" in str(refused.value)
    (project / "tasks.db").write_bytes(b"SQLite format 3\0")  # both: which one is meant?
    with pytest.raises(ConfigError, match="name the one to use by its absolute path"):
        Settings.from_env({"DATABASE_URL": "sqlite:///tasks.db"})
    for chosen in (project / "tasks.db", earlier):
        url = f"sqlite:///{chosen}"
        assert Settings.from_env({"DATABASE_URL": url}).database_url == url


def test_a_sqlite_url_naming_a_folder_is_refused(project: Path) -> None:
    """It failed at each use as a database that "cannot be opened ... try again shortly"."""
    for url in ("sqlite:///instance/", f"sqlite:///{project / 'instance'}"):
        with pytest.raises(ConfigError, match=r"names a folder .*, not a SQLite file"):
            Settings.from_env({"DATABASE_URL": url})


def test_uri_filenames_are_decoded_and_file_colon_alone_is_a_path(project: Path) -> None:
    (project / "my db").mkdir()
    spaced = Settings.from_env({"DATABASE_URL": "sqlite:///file:my%20db/x.db?uri=true"})
    assert spaced.database_url == f"sqlite:///file:{project}/my%20db/x.db?uri=true"
    with pytest.raises(ConfigError, match="folder that does not exist"):
        Settings.from_env({"DATABASE_URL": "sqlite:///file:no%20such/x.db?uri=true"})
    plain = Settings.from_env({"DATABASE_URL": "sqlite:///file:x.db"})  # no ?uri=true
    assert plain.database_url == f"sqlite:///{project}/file:x.db"


def test_an_installed_package_takes_relative_paths_from_the_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "PROJECT_FOLDER", None)
    shown = Settings.from_env({"DATABASE_URL": "sqlite:///tasks.db"}).database_url
    assert shown == f"sqlite:///{Path.cwd() / 'tasks.db'}"
    # Installed, the instance folder is where Flask puts an installed package's.
    monkeypatch.setattr(config, "find_package", lambda _name: ("/env", "/env/lib/site"))
    assert config._folders() == (None, "/env/var/app-instance")


def test_the_access_log_is_stdout_or_a_file_in_a_folder_that_exists(tmp_path: Path) -> None:
    assert Settings.from_env({"GUNICORN_ACCESS_LOG": "-"}).gunicorn_access_log == "-"
    log = str(tmp_path / "access.log")
    assert Settings.from_env({"GUNICORN_ACCESS_LOG": log}).gunicorn_access_log == log
    for bad in (str(tmp_path / "missing" / "access.log"), str(tmp_path)):
        with pytest.raises(ConfigError, match="GUNICORN_ACCESS_LOG must be -"):
            Settings.from_env({"GUNICORN_ACCESS_LOG": bad})


@pytest.mark.parametrize(("threads", "waiting"), [("8", 4), ("3", 1), ("1", 0)])
def test_waits_leave_a_worker_threads_to_serve_other_requests(threads: str, waiting: int) -> None:
    """By default half a worker's threads may wait; with one thread, none may."""
    assert Settings.from_env({"GUNICORN_THREADS": threads}).waiting_capacity == waiting
    explicit = {"GUNICORN_THREADS": "16", "MAX_WAITING_REQUESTS": "15"}
    assert Settings.from_env(explicit).waiting_capacity == 15
