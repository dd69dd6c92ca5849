"""The API reference at /api/docs: Swagger UI's files served by the app, nothing from
elsewhere, and open like the OpenAPI document when API_TOKEN is set.

In a real browser: tests/system/test_api_docs_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import urljoin

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support.apps import build_app, teardown
from tests.support.auth import GOOD, REFUSED, TOKEN
from tests.support.client import assert_error

PAGE = "/api/docs"
SOURCE = re.compile(r'(?:src|href)="([^"]*)"')
SPEC_URL = re.compile(r'\burl:\s*"([^"]*)"')
ANY_HOST = re.compile(r"(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
MIMETYPES = {
    ".js": {"text/javascript", "application/javascript"},
    ".css": {"text/css"},
    ".png": {"image/png"},
}


@pytest.fixture
def guarded(sqlite_url: str) -> Iterator[Flask]:
    """Return an app with API_TOKEN set."""
    app = build_app(sqlite_url, {"API_TOKEN": TOKEN})
    yield app
    teardown([app])


def page(client: FlaskClient, headers: dict[str, str] | None = None) -> str:
    response = client.get(PAGE, headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    text: str = response.get_data(as_text=True)
    return text


def asset_paths(html: str) -> list[str]:
    """Return the path of every file the page loads, resolved as a browser resolves it."""
    return [urljoin(PAGE, source) for source in SOURCE.findall(html)]


def test_the_page_names_no_other_host(client: FlaskClient) -> None:
    html = page(client)
    assert SOURCE.findall(html)
    # No URL with a scheme or a host, in an attribute or in the script.
    assert ANY_HOST.findall(html) == []


def test_every_file_the_page_loads_is_served_with_its_type_and_cached(
    client: FlaskClient,
) -> None:
    paths = asset_paths(page(client))
    assert {"/api/docs/swagger-ui-bundle.js", "/api/docs/swagger-ui.css"} <= set(paths)
    for path in paths:
        assert path.startswith("/api/docs/"), path
        with client.get(path) as response:
            assert response.status_code == 200, path
            assert response.mimetype in MIMETYPES[PurePosixPath(path).suffix], path
            assert response.get_data(), path
            assert response.cache_control.max_age, path
            assert response.headers.get("ETag"), path


def test_the_page_renders_the_openapi_document(client: FlaskClient) -> None:
    found = SPEC_URL.search(page(client))
    assert found is not None
    assert urljoin(PAGE, found.group(1)) == "/api/openapi.json"
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    # The scheme behind the UI's Authorize button, where a user enters the token.
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.mark.parametrize(
    "name",
    [
        "nothing.js",
        "swagger-ui-standalone-preset.js",
        "oauth2-redirect.html",
        "index.css",
        "LICENSE",
        "sub/swagger-ui.css",
        "swagger-ui.css/",
    ],
)
def test_a_file_the_page_does_not_load_is_a_json_404(client: FlaskClient, name: str) -> None:
    body = assert_error(client.get(f"/api/docs/{name}"), 404, "not_found")
    assert body["details"] == {"file": name}


def test_unknown_query_parameters_are_refused_like_on_any_api_route(
    client: FlaskClient,
) -> None:
    for path in (PAGE, "/api/docs/swagger-ui.css"):
        body = assert_error(client.get(f"{path}?v=1"), 400, "invalid_parameter")
        assert body["details"] == {"v": "Unknown parameter."}


def test_the_reference_stays_open_with_a_token_set(guarded: Flask) -> None:
    client = guarded.test_client()
    for headers in (*REFUSED.values(), GOOD):
        paths = asset_paths(page(client, headers))
        for path in paths:
            with client.get(path, headers=headers) as response:
                assert response.status_code == 200, path
        assert client.get("/api/openapi.json", headers=headers).status_code == 200
    assert_error(client.get("/api/docs/nothing.js"), 404, "not_found")
    # The data behind it is not open.
    for headers in REFUSED.values():
        assert_error(client.get("/api/tasks", headers=headers), 401, "unauthorized")
    assert client.get("/api/tasks", headers=GOOD).status_code == 200
