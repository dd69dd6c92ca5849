"""The deterministic simulation of the whole scheduler, on SQLite and PostgreSQL.

`SIM_SEEDS` sets how many seeds run on SQLite (200 by default), `SIM_PG_SEEDS` on
PostgreSQL (a quarter of those), `SIM_FIRST_SEED` the first, `SIM_STEPS` the steps per
seed; `SIM_SEED=<n>` replays exactly one seed.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, event

from tests.support.apps import build_app, process_engine
from tests.support.simulation import Simulation, seeds

# PostgreSQL pays a network round trip per statement: it runs a quarter of the seeds.
SEEDS = int(os.environ.get("SIM_SEEDS", "200"))
PG_SEEDS = int(os.environ.get("SIM_PG_SEEDS", str(max(1, SEEDS // 4))))
FIRST = int(os.environ.get("SIM_FIRST_SEED", "1"))
STEPS = int(os.environ.get("SIM_STEPS", "80"))
ONLY = os.environ.get("SIM_SEED")


def engine_for(url: str) -> Engine:
    build_app(url, {}).extensions["store"].engine.dispose()  # creates the schema
    engine = process_engine(url)
    if engine.dialect.name == "postgresql":
        quick_commits(engine)
    return engine


def quick_commits(engine: Engine) -> None:
    """Let the simulation's sessions commit without waiting for the WAL to be flushed.

    Each seed commits hundreds of small transactions; surviving a crash of the database
    server is not what it tests.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()


def test_every_seed_keeps_every_invariant(database_url: str) -> None:
    engine = engine_for(database_url)
    count = PG_SEEDS if engine.dialect.name == "postgresql" else SEEDS
    chosen = [int(ONLY)] if ONLY else list(seeds(FIRST, count))
    try:
        for seed in chosen:
            Simulation(engine, seed, steps=STEPS).run()
    finally:
        engine.dispose()


def test_a_seed_replays_exactly(sqlite_url: str) -> None:
    engine = engine_for(sqlite_url)
    try:
        first = Simulation(engine, 7, steps=120).run()
        again = Simulation(engine, 7, steps=120).run()
    finally:
        engine.dispose()
    assert len(first) > 60
    assert first == again
