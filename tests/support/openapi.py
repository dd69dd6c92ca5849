"""The OpenAPI document the app serves: where, and whether a value matches one of its schemas."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

URL = "/api/openapi.json"


def conforms(document: dict[str, Any], name: str, instance: Any) -> list[str]:
    """Return why `instance` does not match the named component schema (empty when it does)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return [error.message for error in Draft202012Validator(schema).iter_errors(instance)]
