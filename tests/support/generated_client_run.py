"""Call every operation of a real server through the client generated from its OpenAPI document.

Run by tests/system/test_openapi_tools.py in the generator's own environment, with the
generated package `task_scheduler_client` on PYTHONPATH:
`python generated_client_run.py BASE_URL TOKEN`. It checks each answer's typed value and
prints, as JSON, the operations it called; any failed check exits non-zero.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlparse

from task_scheduler_client import AuthenticatedClient, Client
from task_scheduler_client.api.default import (
    cancel_batch,
    cancel_task,
    create_schedule,
    delete_queue,
    delete_schedule,
    delete_task,
    edit_schedule,
    edit_task,
    get_batch,
    get_queue,
    get_schedule,
    get_status,
    get_task,
    health,
    list_instances,
    list_queues,
    list_schedules,
    list_tasks,
    openapi_document,
    pause_queue,
    resume_queue,
    retry_batch,
    retry_task,
    set_queue_limits,
    stream_events,
    submit_batch,
    submit_task,
    task_attempts,
    task_blockers,
)
from task_scheduler_client.models import (
    AttemptOutcome,
    AttemptsOut,
    BatchIn,
    BatchOut,
    BatchSummaryOut,
    BlockerKind,
    BlockersOut,
    DatabaseStatus,
    Error,
    HealthOut,
    HealthStatus,
    InstanceOut,
    InstanceState,
    QueueLimitsIn,
    QueueOut,
    ScheduledTaskIn,
    ScheduleEdit,
    ScheduleIn,
    ScheduleOut,
    SchedulerState,
    Status,
    TaskEdit,
    TaskIn,
    TaskOut,
    TaskStatusOut,
    TaskSummary,
    TriggerRule,
)

DEADLINE_S = 30.0
called: list[str] = []


def answer(module: Any, client: Client, *args: Any, expect: int = 200, **kwargs: Any) -> Any:
    """Call one operation, check its HTTP status, and return the parsed, typed answer."""
    response = module.sync_detailed(*args, client=client, **kwargs)
    assert response.status_code == HTTPStatus(expect), (module.__name__, response.content)
    called.append(module.__name__.rsplit(".", 1)[-1])
    return response


def task(task_id: str, **fields: Any) -> TaskIn:
    return TaskIn(type_="simulate", duration_ms=1, id=task_id, **fields)


def next_cursor(link: str | None) -> str | None:
    """Return the cursor of a `Link: <url>; rel="next"` header, or None on the last page."""
    if not link:
        return None
    url = link.split(";", 1)[0].strip("<> ")
    return parse_qs(urlparse(url).query)["cursor"][0]


def main(base_url: str, token: str) -> None:
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
    anonymous = Client(base_url=base_url, raise_on_unexpected_status=True)

    document = answer(openapi_document, anonymous).parsed  # public, even with a token set
    assert document["openapi"] == "3.1.0"
    refused = answer(list_tasks, anonymous, expect=401).parsed
    assert isinstance(refused, Error) and refused.code == "unauthorized"

    state = answer(health, anonymous).parsed
    assert isinstance(state, HealthOut) and state.status is HealthStatus.OK
    assert state.database.status is DatabaseStatus.OK and state.database.dialect == "sqlite"
    assert state.scheduler.state is SchedulerState.RUNNING
    assert isinstance(state.scheduler.max_concurrent, int)

    # trigger_rule: null (the default, all_success) and a value.
    plain = answer(submit_task, client, body=task("plain", trigger_rule=None), expect=201)
    assert plain.parsed.trigger_rule is TriggerRule.ALL_SUCCESS
    assert plain.parsed.status is Status.QUEUED
    replay = answer(submit_task, client, body=task("plain", trigger_rule=None))
    assert replay.parsed.id == "plain"
    later = datetime.now(UTC) + timedelta(hours=1)
    answer(submit_task, client, body=task("later", run_at=later), expect=201)
    after = task("after", dependencies=["later"], trigger_rule=TriggerRule.ALL_DONE)
    created = answer(submit_task, client, body=after, expect=201).parsed
    assert isinstance(created, TaskOut) and created.trigger_rule is TriggerRule.ALL_DONE

    held = answer(task_blockers, client, "after").parsed
    assert isinstance(held, BlockersOut) and held.status is Status.QUEUED
    (blocker,) = held.blockers
    assert blocker.kind is BlockerKind.DEPENDENCY and blocker.status is Status.QUEUED
    waiting = answer(task_blockers, client, "later").parsed
    assert [b.kind for b in waiting.blockers] == [BlockerKind.RUN_AT]

    cancelled = answer(cancel_task, client, "later").parsed
    assert cancelled.status is Status.CANCELLED and cancelled.error_code == "cancelled"
    requeued = answer(retry_task, client, "later").parsed
    assert requeued.status is Status.QUEUED and requeued.error_code is None
    gone = answer(get_task, client, "nope", expect=404).parsed
    assert isinstance(gone, Error) and gone.code == "not_found"

    deadline = time.monotonic() + DEADLINE_S
    while (status := answer(get_status, client, "plain").parsed).status is not Status.COMPLETED:
        assert isinstance(status, TaskStatusOut) and time.monotonic() < deadline, status
        time.sleep(0.05)
    done = answer(get_task, client, "plain").parsed
    assert done.status is Status.COMPLETED and done.finished_at.tzinfo is not None
    waited = answer(get_task, client, "plain", wait=5.0).parsed  # ended: at once
    assert waited.status is Status.COMPLETED
    history = answer(task_attempts, client, "plain").parsed
    assert isinstance(history, AttemptsOut) and history.total == 1
    (only,) = history.attempts
    assert only.outcome is AttemptOutcome.COMPLETED and only.traceback is None
    # The server ends each stream after a second (EVENT_STREAM_MAX_S): the whole body.
    streamed = answer(stream_events, client, task="plain", last_event_id="0").content.decode()
    assert streamed.startswith("retry: ") and '"status": "COMPLETED"' in streamed, streamed
    (instance,) = answer(list_instances, client).parsed
    assert isinstance(instance, InstanceOut) and instance.state is InstanceState.RUNNING
    assert isinstance(instance.slots, int) and instance.slots >= 1

    batch = BatchIn(tasks=[task(f"b{i}", run_at=later) for i in range(3)])
    stored = answer(submit_batch, client, body=batch, expect=201).parsed
    assert isinstance(stored, BatchOut) and [t.id for t in stored.tasks] == ["b0", "b1", "b2"]

    # Page by page, the filters kept in the cursor.
    seen, cursor = [], None
    filters = {"status": Status.QUEUED, "type_": "simulate", "batch_id": stored.batch_id}
    while True:
        page = answer(list_tasks, client, limit=2, cursor=cursor or None, **filters)
        assert all(isinstance(t, TaskSummary) and t.status is Status.QUEUED for t in page.parsed)
        seen += [t.id for t in page.parsed]
        cursor = next_cursor(page.headers.get("link"))
        if cursor is None:
            break
    assert sorted(seen) == ["b0", "b1", "b2"], seen

    schedules(client)
    queues(client)
    acting(client, stored.batch_id)
    print(json.dumps(sorted(set(called))))


def schedules(client: AuthenticatedClient) -> None:
    """Create, read, list, pause and delete a schedule through the typed client."""
    work = ScheduledTaskIn(type_="simulate", duration_ms=1)
    body = ScheduleIn(id="nightly", cron="0 2 * * *", timezone="Europe/Paris", task=work)
    made = answer(create_schedule, client, body=body, expect=201).parsed
    assert isinstance(made, ScheduleOut) and made.cron == "0 2 * * *"
    assert len(made.next_firings) == 5 and made.next_firings[0].tzinfo is not None
    assert made.last_firing is None and made.counts.fired == 0
    shown = answer(get_schedule, client, "nightly").parsed
    assert isinstance(shown, ScheduleOut) and shown.timezone == "Europe/Paris"
    listed = answer(list_schedules, client, limit=10).parsed
    assert [s.id for s in listed] == ["nightly"]
    paused = answer(edit_schedule, client, "nightly", body=ScheduleEdit(paused=True)).parsed
    assert paused.paused is True and paused.next_firings == []
    answer(delete_schedule, client, "nightly", expect=204)
    gone = answer(get_schedule, client, "nightly", expect=404).parsed
    assert isinstance(gone, Error) and gone.code == "not_found"


def queues(client: AuthenticatedClient) -> None:
    """Limit, pause, show, resume, list and delete a queue through the typed client."""
    limits = QueueLimitsIn(concurrency_limit=2, rate_limit_per_s=None)
    limited = answer(set_queue_limits, client, "reports", body=limits).parsed
    assert isinstance(limited, QueueOut) and limited.concurrency_limit == 2
    assert limited.rate_limit_per_s is None and limited.counts["QUEUED"] == 0
    paused = answer(pause_queue, client, "reports").parsed
    assert isinstance(paused, QueueOut) and paused.paused is True and paused.state == "paused"
    shown = answer(get_queue, client, "reports").parsed
    assert isinstance(shown, QueueOut) and shown.paused is True
    resumed = answer(resume_queue, client, "reports").parsed
    assert isinstance(resumed, QueueOut) and resumed.paused is False
    listed = answer(list_queues, client).parsed
    assert {"default", "reports"} <= {q.name for q in listed}, listed
    answer(delete_queue, client, "reports", expect=204)  # empty: its settings go
    kept = answer(delete_queue, client, "default", expect=409).parsed
    assert isinstance(kept, Error) and kept.code == "invalid_state"
    gone = answer(get_queue, client, "ghost", expect=404).parsed
    assert isinstance(gone, Error) and gone.code == "not_found"


def acting(client: AuthenticatedClient, batch_id: str) -> None:
    """Change a QUEUED task, delete a finished one, show, cancel and retry a batch."""
    edited = answer(edit_task, client, "b0", body=TaskEdit(priority=9, queue="reports")).parsed
    assert isinstance(edited, TaskOut) and edited.priority == 9 and edited.queue == "reports"
    answer(delete_task, client, "plain", expect=204)
    answer(get_task, client, "plain", expect=404)
    refused = answer(delete_task, client, "b1", expect=409).parsed  # QUEUED
    assert isinstance(refused, Error) and refused.code == "invalid_state"
    shown = answer(get_batch, client, batch_id).parsed
    assert isinstance(shown, BatchSummaryOut) and shown.total == 3 and shown.state == "queued"
    cancelled = answer(cancel_batch, client, batch_id).parsed
    assert isinstance(cancelled, BatchSummaryOut) and cancelled.counts["CANCELLED"] == 3
    retried = answer(retry_batch, client, batch_id).parsed
    assert isinstance(retried, BatchSummaryOut) and retried.counts["QUEUED"] == 3


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
