# ruff: noqa: F811
"""Races on PostgreSQL between cascades, promotion of delayed tasks and the count folds.

The scenarios and checks of test_interleave_pg.py, on graphs where two cascades overlap,
a due delayed task is promoted while a user acts on it, and two folds race.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from app.services import submissions
from app.statuses import Status
from app.storage import counts
from tests.integration.test_interleave_pg import (
    Graph,
    cancel,
    claim,
    cycle,
    engine,  # noqa: F401
    explorer,  # noqa: F401
    finish,
    retry,
)
from tests.support.interleave import Explorer, Scenario, Step

pytestmark = pytest.mark.postgres
COMPLETED, FAILED = Status.COMPLETED, Status.FAILED
PAST = datetime.now(UTC) - timedelta(hours=1)


def add_at(g: Graph, task_id: str, *dependencies: str, rule: str = "all_success") -> None:
    body = {
        "id": task_id,
        "type": "t",
        "duration_ms": 1,
        "trigger_rule": rule,
        "dependencies": list(dependencies),
        "run_at": PAST,
    }
    submissions.submit(g.engine, body)


def two_running_shared_below(engine: Engine) -> Graph:
    """A, B RUNNING; C <- A; D <- B; T <- C, D; U <- T; X (all_done) <- T, C."""
    g = Graph(engine)
    g.add("A")
    g.add("B")
    g.add("C", "A")
    g.add("D", "B")
    g.add("T", "C", "D")
    g.add("U", "T")
    g.add("X", "T", "C", rule="all_done")
    g.claim("A", "B")
    return g


def two_running_one_dependent(engine: Engine) -> Graph:
    """A, B RUNNING; T <- A, B; V <- T; W (all_done) <- T."""
    g = Graph(engine)
    g.add("A")
    g.add("B")
    g.add("T", "A", "B")
    g.add("V", "T")
    g.add("W", "T", rule="all_done")
    g.claim("A", "B")
    return g


def a_delayed_due(engine: Engine) -> Graph:
    """A's run_at has passed; it was never promoted. T <- A."""
    g = Graph(engine)
    g.register()
    add_at(g, "A")
    g.add("T", "A")
    return g


def a_running_t_delayed_behind(engine: Engine) -> Graph:
    """A RUNNING; T <- A whose run_at has passed; V <- T."""
    g = Graph(engine)
    g.add("A")
    add_at(g, "T", "A")
    g.add("V", "T")
    g.claim("A")
    return g


def a_failed_delayed_below(engine: Engine) -> Graph:
    """A (run_at passed) FAILED; T <- A (run_at passed) UPSTREAM_FAILED."""
    g = Graph(engine)
    g.register()
    add_at(g, "A")
    add_at(g, "T", "A")
    g.claim("A")
    g.finish("A", FAILED)
    return g


def fold() -> Step:
    return Step("fold", lambda g: counts.fold(g.engine), compared=False)


SCENARIOS = [
    Scenario(
        "fail_vs_fail_shared_below",
        two_running_shared_below,
        finish("A", FAILED),
        finish("B", FAILED),
    ),
    Scenario(
        "fail_vs_fail_one_dependent",
        two_running_one_dependent,
        finish("A", FAILED),
        finish("B", FAILED),
    ),
    Scenario(
        "fail_vs_cancel_running_one_dependent",
        two_running_one_dependent,
        finish("A", FAILED),
        cancel("B"),
    ),
    Scenario(
        "cycle_fail_vs_cancel_running", two_running_one_dependent, cycle("A", FAILED), cancel("B")
    ),
    Scenario("claim_promote_vs_cancel_delayed", a_delayed_due, claim(), cancel("A")),
    Scenario(
        "cycle_completes_dependency_of_delayed_vs_cancel",
        a_running_t_delayed_behind,
        cycle("A", COMPLETED),
        cancel("T"),
    ),
    Scenario("retry_delayed_vs_claim", a_failed_delayed_below, retry("A"), claim()),
    Scenario("fold_vs_fold", two_running_one_dependent, fold(), fold()),
    Scenario("fold_vs_fail", two_running_one_dependent, fold(), finish("A", FAILED)),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_interleaving_is_serializable(explorer: Explorer, scenario: Scenario) -> None:
    report = explorer.explore(scenario)
    print(report.summary())
    assert report.runs > 0
    if report.failed:
        pytest.fail(report.describe(), pytrace=False)
