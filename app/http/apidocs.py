"""The API reference in a browser: Swagger UI on `/api/docs`, showing `/api/openapi.json`.

Everything the page needs comes from this server: the UI's script, style and icons are the
built files of the flask-swagger-ui package, served from `/api/docs/<file>`, and the page
names no other host. Its URLs are relative, so it works wherever the document does. The
document's bearer scheme gives the UI its Authorize button, so that with API_TOKEN set
"Try it out" can send the token. Like the document, the page and its files stay open with
a token set (app/http/auth.py): they describe the API and expose no data.
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response, send_from_directory

from app.errors import NotFound
from app.http.inputs import only_parameters

bp = Blueprint("apidocs", __name__, url_prefix="/api")

# Swagger UI's built files, as the installed package holds them.
DIST = str(files("flask_swagger_ui").joinpath("dist"))
# The files the page loads; the rest of the folder (the stand-alone layout with its box
# to open any URL, the OAuth2 redirect page) is not served.
ASSETS = frozenset(
    {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "favicon-16x16.png"}
)
# A day: the files change only when the package is upgraded, and their ETag lets a
# browser check them again cheaply after that.
ASSET_MAX_AGE_S = 24 * 3600

# Relative URLs: from /api/docs, "docs/x" is /api/docs/x and "openapi.json" is
# /api/openapi.json. validatorUrl null keeps the UI from sending the document to
# Swagger's online validator.
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Task Scheduler API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
  <style>body { margin: 0; background: #fafafa; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis],
      deepLinking: true,
      validatorUrl: null
    });
  </script>
</body>
</html>
"""


@bp.get("/docs")
def reference_page() -> Response:
    """Serve the page that renders the OpenAPI document with Swagger UI."""
    only_parameters()
    return Response(PAGE, 200, mimetype="text/html")


@bp.get("/docs/<path:filename>")
def reference_asset(filename: str) -> Response:
    """Serve one of the files the page loads, from the package, cached for a day."""
    only_parameters()
    if filename not in ASSETS:
        raise NotFound(f"The API reference has no file {filename!r}.", {"file": filename})
    return send_from_directory(DIST, filename, max_age=ASSET_MAX_AGE_S)
