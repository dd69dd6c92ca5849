"""The README's and docs' shell examples, run in order against a real server.

Each document gets a fresh database and a gunicorn started as `make run` starts it; its
examples run in a scratch folder, in order, as a reader would paste them, and what each
prints is compared with the output the document shows (tests/support/doc_examples.py).
A `make run` line (re)starts the server with the settings written before it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.doc_examples import Command, mismatches, parse
from tests.support.servers import ROOT, Launcher, Server, service_env

# Every document with an example to run; a ```bash block runs unless marked `not run`.
DOCUMENTS = [
    name
    for name in ["README.md", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/*.md"))]
    if any(block.skip is None for block in parse(ROOT / name, ROOT))
]
MAKE_RUN = re.compile(r"^((?:[A-Z_]+=\S+\s+)*)make run\s*$")
EXPORT = re.compile(r"^export ([A-Z_]+)=")
# Commands that change something run once; the others are read again until they show
# what the document shows (a task that is still running, say).
ACTS = re.compile(r"-X POST|flask tasks (submit|cancel|retry|prune)|^(mkdir|printf|echo|cat) ")
NEVER = re.compile(r"^(make (test|lint|bench)|\.venv/bin/python -m pytest|python -m pytest)")
DEADLINE_S = 40.0
# The HTTP status of every curl, on stderr, without changing what curl prints.
PRELUDE = "curl() { command curl -w '%{stderr}\\nHTTP-STATUS %{http_code}\\n' \"$@\"; }\n"


class Reader:
    """Runs one document's examples as a reader would, against its own server."""

    def __init__(self, launcher: Launcher, db: Path, workdir: Path) -> None:
        self.launcher = launcher
        self.db = db
        self.workdir = workdir
        self.server: Server | None = None
        self.exported: dict[str, str] = {}
        (workdir / ".venv").symlink_to(Path(sys.prefix))

    def serve(self, **settings: str) -> Server:
        """Start the server (again) as `make run` would, with `settings` and the exports."""
        if self.server is not None:
            self.server.kill()
        self.server = self.launcher.gunicorn(self.db, **{**self.exported, **settings})
        return self.server

    def env(self) -> dict[str, str]:
        env = service_env(self.db, **self.exported)
        env.update(PYTHONPATH=str(ROOT), FLASK_APP="wsgi")
        return env

    def shell(self, text: str) -> tuple[int, str, str]:
        done = subprocess.run(
            ["bash", "-c", PRELUDE + text],
            cwd=self.workdir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    def run(self, command: Command, where: str) -> None:
        text = command.text.strip()
        assert not NEVER.match(text), f"{where}: mark the block <!-- not run: why -->"
        started = MAKE_RUN.match(text)
        if started:
            settings = dict(kv.split("=", 1) for kv in started.group(1).split())
            self.serve(**{k: v.replace("$PWD", str(self.workdir)) for k, v in settings.items()})
            return
        exported = EXPORT.match(text)
        if exported:
            name = exported.group(1)
            code, out, err = self.shell(f'{text}\nprintf %s "${name}"')
            assert code == 0, f"{where}: {err}"
            self.exported[name] = out
            return
        if self.server is None:  # `make run` serving, as the documents assume
            self.serve()
        port = self.server.base_url.rsplit(":", 1)[1] if self.server else "3000"
        text = text.replace("localhost:3000", f"127.0.0.1:{port}")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            code, out, err = self.shell(text)
            out = out.replace(f"127.0.0.1:{port}", "localhost:3000")
            statuses = re.findall(r"HTTP-STATUS (\d{3})", err)
            status = int(statuses[-1]) if statuses else None
            problems = self.check(command, code, out, err, status)
            if not problems or ACTS.search(text) or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # reading again: the service moves on meanwhile
        assert not problems, f"{where}: {text}\n{problems}\nprinted: {out[:2000]}\n{err[-2000:]}"

    @staticmethod
    def check(command: Command, code: int, out: str, err: str, status: int | None) -> list[str]:
        if code != 0:
            return [f"exit status {code}"]
        if command.expects:
            return mismatches(command.expects, out, status)
        if status is not None and status >= 400:
            return [f"HTTP {status}, and the document shows no error"]
        return []


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_examples_run_in_order_with_the_output_shown(
    document: str, launcher: Launcher, db: Path, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("the examples need curl")
    blocks = [b for b in parse(ROOT / document, ROOT) if b.skip is None]
    workdir = tmp_path / "reader"
    workdir.mkdir()
    reader = Reader(launcher, db, workdir)
    for block in blocks:
        for command in block.commands:
            reader.run(command, f"{document}:{command.line}")
