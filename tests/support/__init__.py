"""What the tests share besides fixtures (those live in the conftest files), a module an idea.

- `apps`: apps on a test database (SQLite file or PostgreSQL schema), and their teardown;
- `waiting`: polling until a condition holds;
- `client`: driving an app through its test client, and the one error shape;
- `handlers`: in-process handlers a test controls (`Gate`, `Switch`);
- `store`: the database under the API, read and written directly;
- `stepping`: a scheduler moved by hand (its clock, its handler threads);
- `strategies`: Hypothesis strategies of task bodies and JSON;
- `auth`: the API token of the tests and the headers that carry it, right and wrong;
- `servers`: real server processes (gunicorn, `flask ...`) and their databases;
- `pgcluster`: a private PostgreSQL cluster to restart and crash;
- `simulation`: the deterministic simulation of the whole scheduler;
- `interleave`: two PostgreSQL sessions interleaved at every statement;
- `sample_handlers`, `ledger_handlers`: handler modules for `TASK_HANDLERS`;
- `openapi`: the OpenAPI document's URL, and values checked against its schemas;
- `openapi_tools`: a client generator and a linter run on the document, and
  `generated_client_run`, the script that drives a server through the generated client.
"""
