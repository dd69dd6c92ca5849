"""The OpenAPI document: valid, complete, and in step with the routes and the schemas.

The app serves it without a database; real answers checked against it are
tests/integration/test_openapi_answers.py.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from app.errors import ApiError
from app.http.openapi import spec_for
from app.schemas import TASK_ERROR_CODES, BlockerOut, TaskIn, TaskOut, TaskStatusOut
from app.statuses import Status
from tests.support.client import assert_error
from tests.support.openapi import URL, conforms

IGNORED_METHODS = {"HEAD", "OPTIONS"}
SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"


def openapi_path(rule: str) -> str:
    """Turn a Flask rule such as `/api/tasks/<task_id>` into `/api/tasks/{task_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def routes(app: Flask) -> dict[tuple[str, str], str]:
    """Return the app's API routes as (path, method) -> view function name."""
    found = {}
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/api/") or rule.rule == "/health"):
            continue
        if rule.endpoint.startswith("apidocs."):
            continue  # the page that renders this document, HTML: no operation of the API
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            found[(openapi_path(rule.rule), method.lower())] = rule.endpoint.rsplit(".", 1)[-1]
    return found


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    validate(document)


def test_every_route_is_documented_and_nothing_else(app: Flask, document: dict[str, Any]) -> None:
    served = routes(app)
    documented = {
        (path, method): operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert ("/api/openapi.json", "get") in served
    assert set(served) - set(documented) == set(), "routes without documentation"
    assert set(documented) - set(served) == set(), "documentation without a route"
    assert documented == served


def test_path_parameters_match_the_rules(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), path


@pytest.mark.parametrize(
    ("component", "schema"),
    [("TaskIn", TaskIn()), ("TaskOut", TaskOut()), ("TaskStatusOut", TaskStatusOut())],
)
def test_components_list_the_schema_fields(
    document: dict[str, Any], component: str, schema: Any
) -> None:
    generated = document["components"]["schemas"][component]
    assert list(generated["properties"]) == list(schema.fields)
    required = {name for name, field in schema.fields.items() if field.required}
    assert set(generated.get("required", [])) == required


def test_the_list_omits_payload_and_result(document: dict[str, Any]) -> None:
    summary = document["components"]["schemas"]["TaskSummary"]["properties"]
    assert set(summary) == set(TaskOut().fields) - {"payload", "result"}


def test_list_parameters_and_headers(document: dict[str, Any]) -> None:
    listing = document["paths"]["/api/tasks"]["get"]
    parameters = {p["name"]: p for p in listing["parameters"]}
    assert list(parameters) == ["status", "type", "batch_id", "limit", "cursor"]
    assert parameters["limit"]["schema"]["minimum"] == 1
    assert parameters["limit"]["schema"]["maximum"] == 1000
    # Several, comma-separated: a string (an exploded array would repeat the parameter,
    # which every route refuses).
    assert parameters["status"]["schema"]["type"] == "string"
    assert "comma-separated" in parameters["status"]["description"]
    assert "Link" in listing["responses"]["200"]["headers"]
    submit = document["paths"]["/api/tasks"]["post"]
    assert "Location" in submit["responses"]["201"]["headers"]


def test_error_codes_cover_every_domain_error(document: dict[str, Any]) -> None:
    code = document["components"]["schemas"]["Error"]["properties"]["code"]
    assert "enum" not in code  # an open set: a later code must not break today's clients
    codes = set(code["examples"])
    pending = list(ApiError.__subclasses__())
    while pending:
        cls = pending.pop()
        assert cls.code in codes
        pending.extend(cls.__subclasses__())
    assert {"method_not_allowed", "internal_error"} <= codes


# Every field holding a closed set of values, and the enum schema it refers to.
ENUM_FIELDS = {
    ("TaskOut", "status"): "Status",
    ("TaskSummary", "status"): "Status",
    ("TaskStatusOut", "status"): "Status",
    ("BlockersOut", "status"): "Status",
    ("BlockerOut", "status"): "Status",
    ("BlockerOut", "kind"): "BlockerKind",
    ("TaskOut", "trigger_rule"): "TriggerRule",
    ("TaskSummary", "trigger_rule"): "TriggerRule",
    ("HealthOut", "status"): "HealthStatus",
    ("DatabaseHealth", "status"): "DatabaseStatus",
    ("SchedulerHealth", "state"): "SchedulerState",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_closed_sets_are_named_enum_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for (component, name), enum in ENUM_FIELDS.items():
        prop = dict(schemas[component]["properties"][name])
        prop.pop("description", None)
        assert prop == ref(enum), (component, name)
        assert schemas[enum]["type"] == "string" and schemas[enum]["enum"], enum
    assert schemas["Status"]["enum"] == [s.value for s in Status]


def test_a_nullable_enum_is_the_enum_or_null(document: dict[str, Any]) -> None:
    trigger_rule = document["components"]["schemas"]["TaskIn"]["properties"]["trigger_rule"]
    assert trigger_rule["anyOf"] == [ref("TriggerRule"), {"type": "null"}]
    assert conforms(document, "TaskIn", {"type": "a", "duration_ms": 1, "trigger_rule": None}) == []
    assert conforms(document, "TaskIn", {"type": "a", "duration_ms": 1, "trigger_rule": "x"}) != []
    # `null` inside an `enum` makes client generators write one enum class per variant.
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            assert None not in node.get("enum", []), node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def test_enum_schemas_hold_what_the_validators_accept(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for field, enum in (
        (TaskIn().fields["trigger_rule"], "TriggerRule"),
        (BlockerOut().fields["kind"], "BlockerKind"),
    ):
        (one_of,) = field.validators
        assert list(one_of.choices) == schemas[enum]["enum"]


def test_a_task_error_code_is_an_open_set(document: dict[str, Any]) -> None:
    error_code = document["components"]["schemas"]["TaskOut"]["properties"]["error_code"]
    assert error_code["type"] == ["string", "null"]
    assert "enum" not in error_code
    for code in TASK_ERROR_CODES:
        assert code in error_code["description"]
    assert "open set" in error_code["description"]


def test_health_parts_are_typed_objects(document: dict[str, Any]) -> None:
    health = document["components"]["schemas"]["HealthOut"]["properties"]
    assert health["database"] == ref("DatabaseHealth")
    assert health["scheduler"] == ref("SchedulerHealth")
    ok = {"dialect": "sqlite", "status": "ok"}
    running = {"state": "running", "instance": "h-1", "max_concurrent": 3, "running": 0}
    answer = {"status": "ok", "database": ok, "scheduler": {**running, "types": None}}
    assert conforms(document, "HealthOut", answer) == []
    disabled = {"status": "ok", "database": ok, "scheduler": {"state": "disabled"}}
    assert conforms(document, "HealthOut", disabled) == []
    bad_state = {**answer, "scheduler": {**running, "state": "sleeping"}}
    assert conforms(document, "HealthOut", bad_state) != []
    bad_count = {**answer, "scheduler": {**running, "running": "1"}}
    assert conforms(document, "HealthOut", bad_count) != []


def test_servers_and_license(document: dict[str, Any]) -> None:
    assert document["servers"] == [
        {"url": "/", "description": "The server that serves this document."}
    ]
    metadata = configparser.ConfigParser()
    metadata.read(SETUP_CFG)
    assert document["info"]["license"]["identifier"] == metadata["metadata"]["license"]


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Return every documented operation, keyed by (path, method)."""
    return {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }


def resolved(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Return a response object, following its `$ref` into components/responses."""
    ref = response.get("$ref")
    if ref is None:
        return response
    prefix = "#/components/responses/"
    assert ref.startswith(prefix), ref
    found: dict[str, Any] = document["components"]["responses"][ref.removeprefix(prefix)]
    return found


def test_every_error_response_uses_the_error_schema(document: dict[str, Any]) -> None:
    for (path, method), operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) >= 400 and (path, status) != ("/health", "503"):
                schema = resolved(document, response)["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)


def test_every_route_documents_401_405_and_500(document: dict[str, Any]) -> None:
    for key, operation in operations(document).items():
        if operation.get("security") == []:  # public: never 401, even with a token set
            assert {"405", "500"} <= set(operation["responses"]), key
            assert "401" not in operation["responses"], key
            continue
        assert {"401", "405", "500"} <= set(operation["responses"]), key
    allow = resolved(document, {"$ref": "#/components/responses/MethodNotAllowed"})
    assert allow["headers"]["Allow"]["required"] is True


def test_the_token_is_an_optional_bearer_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    # Both: the token when API_TOKEN is set, nothing when it is not.
    assert document["security"] == [{"bearerAuth": []}, {}]
    unauthorized = resolved(document, {"$ref": "#/components/responses/Unauthorized"})
    assert "WWW-Authenticate" in unauthorized["headers"]


def test_only_submissions_answer_queue_full(document: dict[str, Any]) -> None:
    full = {key for key, op in operations(document).items() if "429" in op["responses"]}
    assert full == {("/api/tasks", "post"), ("/api/tasks/batch", "post")}
    answer = resolved(document, {"$ref": "#/components/responses/QueueFull"})
    assert answer["headers"]["Retry-After"]["required"] is True
    assert answer["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}


def test_database_faults_are_documented_where_they_can_happen(document: dict[str, Any]) -> None:
    writes = {
        ("/api/tasks", "post"),
        ("/api/tasks/batch", "post"),
        ("/api/tasks/{task_id}/cancel", "post"),
        ("/api/tasks/{task_id}/retry", "post"),
        ("/api/schedules", "post"),
        ("/api/schedules/{schedule_id}", "patch"),
        ("/api/schedules/{schedule_id}", "delete"),
        ("/api/queues/{queue_name}", "put"),
        ("/api/tasks/{task_id}", "patch"),
        ("/api/tasks/{task_id}", "delete"),
        ("/api/batches/{batch_id}/cancel", "post"),
        ("/api/batches/{batch_id}/retry", "post"),
        ("/api/queues/{queue_name}/pause", "post"),
        ("/api/queues/{queue_name}/resume", "post"),
        ("/api/queues/{queue_name}", "delete"),
    }
    every = operations(document)
    full = {key for key, op in every.items() if "507" in op["responses"]}
    assert full == writes
    unavailable = {key for key, op in every.items() if "503" in op["responses"]}
    assert unavailable == set(every) - {("/api/openapi.json", "get")}
    answer = resolved(document, {"$ref": "#/components/responses/DatabaseUnavailable"})
    assert answer["headers"]["Retry-After"]["required"] is True
    for code in ("database_unavailable", "outcome_unknown"):
        assert code in answer["description"]
    codes = document["components"]["schemas"]["Error"]["properties"]["code"]["examples"]
    assert {"database_unavailable", "outcome_unknown", "storage_full"} <= set(codes)


def test_the_document_rejects_what_the_api_rejects(document: dict[str, Any]) -> None:
    assert conforms(document, "TaskIn", {"type": "simulate", "duration_ms": "10"}) != []
    assert conforms(document, "TaskIn", {"type": "simulate", "duration_ms": 1, "x": 1}) != []
    assert conforms(document, "TaskIn", {"id": "-a", "type": "simulate", "duration_ms": 1}) != []
    assert conforms(document, "BatchIn", {"tasks": []}) != []


def test_unknown_query_parameters_are_refused(client: FlaskClient) -> None:
    body = assert_error(client.get(URL + "?format=yaml"), 400, "invalid_parameter")
    assert body["details"] == {"format": "Unknown parameter."}


def test_other_methods_are_not_allowed(client: FlaskClient) -> None:
    response = client.post(URL)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_the_document_is_built_once_per_app(app: Flask, client: FlaskClient) -> None:
    first = client.get(URL).get_json()
    assert spec_for(app) is spec_for(app)
    assert client.get(URL).get_json() == first
