"""/metrics in the multi-process layouts: gunicorn workers, and `flask scheduler run` alone.

Each scrape opens a new connection, so any worker may answer it; every one must read the
same totals. The scheduler process serves its own endpoint on METRICS_PORT.
"""

from __future__ import annotations

from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import Launcher, free_port, poll

TASKS = 12
SCRAPES = 20


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET a metrics URL on a fresh connection; return every sample by name and labels."""
    with requests.Session() as session:
        response = session.get(url, timeout=5, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(url: str, name: str) -> float:
    """Return one counter of the `simulate` type as a scrape of `url` reads it."""
    return scrape(url).get((name, (("type", "simulate"),)), 0.0)


def test_every_gunicorn_worker_reports_the_same_totals(launcher: Launcher, db: Path) -> None:
    server = launcher.gunicorn(db, WEB_CONCURRENCY="3", GUNICORN_THREADS="2")
    for n in range(TASKS):
        server.submit(f"t{n}", 1)
    url = server.base_url + "/metrics"
    submitted = [total(url, "taskscheduler_tasks_submitted_total") for _ in range(SCRAPES)]
    assert submitted == [TASKS] * SCRAPES

    for n in range(TASKS):
        server.wait_status(f"t{n}", "COMPLETED")

    def all_counted() -> bool:
        return total(url, "taskscheduler_tasks_completed_total") == TASKS

    # The last outcome is counted just after its row commits.
    poll(all_counted, 10, "every completion to be counted")
    completed = [total(url, "taskscheduler_tasks_completed_total") for _ in range(SCRAPES)]
    assert completed == [TASKS] * SCRAPES
    samples = scrape(url)
    assert samples[("taskscheduler_tasks", (("status", "COMPLETED"),))] == TASKS
    assert samples[("taskscheduler_task_run_seconds_count", ())] == TASKS
    assert samples[("taskscheduler_running_tasks", ())] == 0


def test_the_scheduler_process_serves_its_own_metrics(launcher: Launcher, db: Path) -> None:
    api = launcher.gunicorn(db, ready="disabled", SCHEDULER_ENABLED="false", WEB_CONCURRENCY="2")
    port = free_port()
    launcher.scheduler(db, METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
    for n in range(TASKS):
        api.submit(f"t{n}", 1)
    for n in range(TASKS):
        api.wait_status(f"t{n}", "COMPLETED")
    url = f"http://127.0.0.1:{port}/metrics"

    def all_counted() -> bool:
        return total(url, "taskscheduler_tasks_completed_total") == TASKS

    poll(all_counted, 10, "every completion to be counted by the scheduler process")
    samples = scrape(url)
    assert samples[("taskscheduler_tasks", (("status", "COMPLETED"),))] == TASKS
    assert samples[("taskscheduler_scheduler_heartbeats_total", ())] >= 1
    assert total(api.base_url + "/metrics", "taskscheduler_tasks_submitted_total") == TASKS
    assert requests.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
