"""GET /metrics: the Prometheus text format, task counts from the database, moving counters."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app import start_scheduler
from app.cli.metrics_endpoint import MetricsEndpoint
from app.runtime.metrics import CONTENT_TYPE, MAX_TYPE_LABELS, OTHER_TYPES, Buckets, Metrics
from app.services.health import report
from app.statuses import Status
from app.storage import database
from app.storage.tables import tasks
from tests.support.apps import AppFactory
from tests.support.client import running_app, submit, wait_status
from tests.support.handlers import Gate, Switch
from tests.support.store import claim_all, exited_pid, register_instance
from tests.support.waiting import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: FlaskClient) -> Samples:
    """GET /metrics, check its format, and return every sample by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value, 0 when it is absent."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_status(samples: Samples) -> dict[str, float]:
    """Return the tasks-by-status gauge as a dict."""
    return {s.value: value(samples, "taskscheduler_tasks", status=s.value) for s in Status}


def counted_in_database(app: Flask) -> dict[str, float]:
    """Count tasks by status straight from the table."""
    counts = dict.fromkeys((s.value for s in Status), 0.0)
    query = select(tasks.c.status, func.count()).group_by(tasks.c.status)
    with database.read(app.extensions["store"].engine) as conn:
        for status, count in conn.execute(query):
            counts[status] = float(count)
    return counts


def test_metrics_is_open_and_in_the_text_format(client: FlaskClient) -> None:
    samples = scrape(client)
    assert by_status(samples) == dict.fromkeys((s.value for s in Status), 0.0)
    assert ("taskscheduler_running_tasks", ()) in samples
    assert ("taskscheduler_task_run_seconds_count", ()) in samples
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_tasks_by_status_match_the_database(make_app: AppFactory) -> None:
    app = make_app()
    client = app.test_client()
    submit(client, "root", type="etl")
    submit(client, "child", "root", type="etl")
    submit(client, "other")
    client.post("/api/tasks/other/cancel")
    assert client.post("/api/tasks/batch", json={"tasks": [task_body("b1")]}).status_code == 201
    samples = scrape(client)
    assert by_status(samples) == counted_in_database(app)
    assert by_status(samples)["QUEUED"] == 3
    assert by_status(samples)["CANCELLED"] == 1
    assert value(samples, "taskscheduler_tasks_submitted_total", type="etl") == 2
    assert value(samples, "taskscheduler_tasks_submitted_total", type="simulate") == 2
    # An identical replay creates nothing.
    client.post("/api/tasks", json=task_body("root", type="etl"))
    assert value(scrape(client), "taskscheduler_tasks_submitted_total", type="etl") == 2


def task_body(task_id: str, **extra: Any) -> dict[str, Any]:
    """Return the body helpers.submit posts."""
    return {"id": task_id, "type": "simulate", "duration_ms": 1, "dependencies": [], **extra}


def test_types_past_the_first_hundred_count_under_one_label(make_app: AppFactory) -> None:
    """Any type is accepted with no handler registered: each one a client invented was a
    series of its own, without bound."""
    app = make_app()
    client = app.test_client()
    batch = [task_body(f"t{k}", type=f"kind{k:03d}") for k in range(MAX_TYPE_LABELS + 50)]
    assert client.post("/api/tasks/batch", json={"tasks": batch}).status_code == 201
    samples = scrape(client)
    labelled = {
        dict(labels)["type"]
        for (name, labels), _ in samples.items()
        if name == "taskscheduler_tasks_submitted_total"
    }
    assert len(labelled) == MAX_TYPE_LABELS + 1
    assert value(samples, "taskscheduler_tasks_submitted_total", type=OTHER_TYPES) == 50
    assert (
        sum(v for (name, _), v in samples.items() if name == "taskscheduler_tasks_submitted_total")
        == MAX_TYPE_LABELS + 50
    )


def test_counters_move_when_tasks_run(make_app: AppFactory) -> None:
    gate, switch = Gate(), Switch()
    app = running_app(make_app, {"gated": gate, "flaky": switch})
    client = app.test_client()
    submit(client, "held", type="gated")
    wait_status(client, "held", "RUNNING")
    # The gauge follows the attempt's start on its thread, just after the claim commits.
    wait_for(lambda: value(scrape(client), "taskscheduler_running_tasks") == 1, what="1 running")
    gate.release.set()
    submit(client, "ok")
    submit(client, "bad", payload={"fail": True})
    submit(client, "flaky", type="flaky", max_attempts=2, retry_backoff_ms=0)
    for task_id in ("held", "ok", "bad", "flaky"):
        wait_status(client, task_id, "COMPLETED", "FAILED")

    def settled() -> Samples | None:
        # The counters move as each outcome is settled, just after its commit.
        samples = scrape(client)
        ran = value(samples, "taskscheduler_task_run_seconds_count")
        idle = value(samples, "taskscheduler_running_tasks") == 0
        return samples if idle and ran == 5 else None

    after = wait_for(settled, what="every outcome counted")
    assert by_status(after) == counted_in_database(app)
    assert value(after, "taskscheduler_running_tasks") == 0
    assert value(after, "taskscheduler_tasks_completed_total", type="gated") == 1
    assert value(after, "taskscheduler_tasks_completed_total", type="simulate") == 1
    assert value(after, "taskscheduler_tasks_failed_total", type="simulate") == 1
    assert value(after, "taskscheduler_tasks_failed_total", type="flaky") == 1
    assert value(after, "taskscheduler_task_retries_total", type="flaky") == 1
    assert value(after, "taskscheduler_task_run_seconds_count") == 5
    assert value(after, "taskscheduler_task_queue_wait_seconds_count") == 5
    assert value(after, "taskscheduler_task_queue_wait_seconds_sum") >= 0


def test_heartbeats_are_counted(make_app: AppFactory) -> None:
    app = running_app(make_app)
    client = app.test_client()

    def beaten() -> Samples | None:
        samples = scrape(client)
        return samples if value(samples, "taskscheduler_scheduler_heartbeats_total") else None

    samples = wait_for(beaten, what="the heartbeat at start")
    assert value(samples, "taskscheduler_scheduler_last_heartbeat_timestamp_seconds") > 0
    before = value(samples, "taskscheduler_scheduler_heartbeats_total")
    assert app.extensions["scheduler"].heartbeat.run_once()
    assert value(scrape(client), "taskscheduler_scheduler_heartbeats_total") >= before + 1


def test_recoveries_of_a_dead_instance_are_counted(make_app: AppFactory) -> None:
    app = make_app(SCHEDULER_ENABLED="true", POLLING_INTERVAL="3600000")
    client = app.test_client()
    store = app.extensions["store"]
    register_instance(store, "crashed", exited_pid())
    submit(client, "was_running")
    claim_all(store, worker="crashed")
    start_scheduler(app)
    wait_status(client, "was_running", "FAILED")
    assert value(scrape(client), "taskscheduler_recovered_attempts_total") == 1


def test_each_app_has_its_own_registry(make_app: AppFactory) -> None:
    first, second = make_app(), make_app()
    submit(first.test_client(), "only-in-first")
    assert isinstance(first.extensions["metrics"], Metrics)
    assert first.extensions["metrics"].registry is not second.extensions["metrics"].registry
    samples = scrape(second.test_client())
    assert value(samples, "taskscheduler_tasks_submitted_total", type="simulate") == 0


def test_buckets_count_a_value_equal_to_a_bound_in_that_bound_and_render_cumulatively() -> None:
    registry = CollectorRegistry()
    histogram = Buckets("demo_seconds", "A demo.", (0.1, 1.0))
    registry.register(histogram)
    histogram.observe_all([0.05, 0.1, 0.5, 1.0, 7.0])
    histogram.observe_all([])
    (family,) = text_string_to_metric_families(generate_latest(registry).decode())
    found = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert found[("demo_seconds_bucket", "0.1")] == 2
    assert found[("demo_seconds_bucket", "1.0")] == 4
    assert found[("demo_seconds_bucket", "+Inf")] == 5
    assert found[("demo_seconds_count", None)] == 5
    assert found[("demo_seconds_sum", None)] == pytest.approx(8.65)


@pytest.fixture
def endpoint(make_app: AppFactory) -> Iterator[tuple[Flask, MetricsEndpoint]]:
    """Return an app and the scheduler process's metrics endpoint serving it on a free port."""
    app = make_app()
    served = MetricsEndpoint(app.extensions["metrics"], "127.0.0.1", 0)
    yield app, served
    served.close()


def test_the_scheduler_endpoint_serves_what_the_route_serves(
    endpoint: tuple[Flask, MetricsEndpoint],
) -> None:
    app, served = endpoint
    submit(app.test_client(), "counted")
    response = requests.get(served.url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    assert response.text == app.test_client().get("/metrics").get_data(as_text=True)
    assert 'taskscheduler_tasks{status="QUEUED"} 1.0' in response.text


def test_the_scheduler_endpoint_answers_anything_else_in_json(
    endpoint: tuple[Flask, MetricsEndpoint],
) -> None:
    _, served = endpoint
    elsewhere = requests.get(served.url.replace("/metrics", "/api/tasks"), timeout=5)
    assert elsewhere.status_code == 404
    assert elsewhere.json()["code"] == "not_found"
    posted = requests.post(served.url, data=b"x", timeout=5)
    assert posted.status_code == 405
    assert posted.json()["code"] == "method_not_allowed"
    assert posted.headers["Allow"] == "GET, HEAD"


def test_the_scheduler_endpoint_answers_health_as_the_api_does(make_app: AppFactory) -> None:
    """A process that only schedules had no /health for an orchestrator to probe."""
    app = running_app(make_app)
    scheduler = app.extensions["scheduler"]
    health = partial(report, app.extensions["store"].engine, scheduler)
    served = MetricsEndpoint(app.extensions["metrics"], "127.0.0.1", 0, health=health)
    url = served.url.replace("/metrics", "/health")
    try:
        answer = wait_for(
            lambda: (r := requests.get(url, timeout=5)).status_code == 200 and r,
            what="the scheduler's first pass",
        )
        assert answer.headers["Content-Type"] == "application/json"
        body = answer.json()
        assert body == app.test_client().get("/health").get_json()
        assert (body["status"], body["scheduler"]["instance"]) == ("ok", scheduler.id)
        scheduler.stop(0)
        stopped = requests.get(url, timeout=5)
        assert stopped.status_code == 503
        assert stopped.json()["scheduler"]["state"] == "stopped"
    finally:
        served.close()


def test_the_scheduler_endpoint_wants_the_token_with_auth_ops_routes(
    make_app: AppFactory,
) -> None:
    token = "t" * 20
    app = make_app(API_TOKEN=token, AUTH_OPS_ROUTES="true")
    served = MetricsEndpoint(app.extensions["metrics"], "127.0.0.1", 0, token)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = requests.get(served.url, headers=headers, timeout=5)
            assert refused.status_code == 401
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        given = {"Authorization": f"Bearer {token}"}
        assert requests.get(served.url, headers=given, timeout=5).status_code == 200
    finally:
        served.close()


def test_scheduler_run_exits_cleanly_when_the_metrics_port_is_taken(make_app: AppFactory) -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = make_app(METRICS_PORT=str(port))
        result = app.test_cli_runner().invoke(args=["scheduler", "run"])
    assert result.exit_code == 2
    assert f"error: METRICS_PORT: cannot serve metrics on 127.0.0.1:{port}" in result.output
    assert app.extensions["scheduler"].id is None  # it never started
