"""The shell examples of the README and docs/: parsed into commands and the output they show.

A ```bash block is an example unless the line before it says `<!-- not run: why -->`.
Its commands run in order, one document on one fresh database; a command's shown output
is what follows it: a comment after it (`# {...}`, `# 201 {...}`, `# Link: ...`), the
comment lines below it that look like output, or a ```json block right after the block
(for the block's last command). A remark (`# the batch, newest first`) is not output.

What is compared: the status code when the output starts with one; every `"key": value`
pair of the shown JSON whose value is a literal, in the order shown (an example may leave
fields out with `...`); header names. Values that differ on every run (times, generated
ids, the worker's name) are not compared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKIP = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
# `"key": literal`: a string, a number, true, false, null, or a list of those.
PAIR = re.compile(
    r'"([A-Za-z_]\w*)":\s*'
    r'("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null|\[[^\[\]{}]*\])'
)
HEADER = re.compile(r"^([A-Z][A-Za-z-]+): ")
STATUS = re.compile(r"^(\d{3})\b")
# Fields whose values are new on every run.
VOLATILE = {
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "worker",
    "instance",
    "batch_id",
    "time",
}


@dataclass
class Command:
    """One shell command of an example, with the output shown for it (if any)."""

    text: str
    line: int
    shown: list[str] = field(default_factory=list)

    @property
    def expects(self) -> str:
        """Return the shown output as one text."""
        return "\n".join(self.shown).strip()


@dataclass
class Block:
    """One ```bash block: its commands, or why it does not run."""

    document: str
    line: int
    commands: list[Command]
    skip: str | None = None


def _looks_like_output(text: str) -> bool:
    return bool(text) and (
        text[0] in '{["' or STATUS.match(text) is not None or HEADER.match(text) is not None
    )


def _split_comment(line: str) -> tuple[str, str | None]:
    """Split `command  # comment` at the first `#` outside quotes that follows a space."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line, None


def _balanced(text: str) -> bool:
    return text.count("'") % 2 == 0 and not text.endswith("\\")


def parse(path: Path, root: Path) -> list[Block]:
    """Return the ```bash blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = str(path.relative_to(root))
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() not in ("```bash", "```sh"):
            i += 1
            continue
        start = i
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(before)
        i += 1
        body: list[tuple[int, str]] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        commands = _commands(body)
        # A ```json block right after the block is the output of its last command.
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j].strip() == "```json" and commands:
            j += 1
            while j < len(lines) and lines[j].strip() != "```":
                commands[-1].shown.append(lines[j])
                j += 1
        blocks.append(Block(name, start + 1, commands, skip.group(1) if skip else None))
    return blocks


def _commands(body: list[tuple[int, str]]) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []
    pending_line = 0
    in_output = False
    for number, raw in body:
        if pending:
            pending.append(raw)
            if _balanced("\n".join(pending)):
                _finish(commands, pending, pending_line)
                pending = []
            continue
        stripped = raw.strip()
        if not stripped:
            in_output = False
            continue
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            continued = in_output and stripped.startswith("#  ")
            shows = (
                bool(commands)
                and _looks_like_output(text)
                and (in_output or not commands[-1].shown)
            )
            if commands and (continued or shows):
                commands[-1].shown.append(text)
                in_output = True
            else:
                in_output = False
            continue
        in_output = False
        pending, pending_line = [raw], number
        if _balanced(raw):
            _finish(commands, pending, pending_line)
            pending = []
    return commands


def _finish(commands: list[Command], pending: list[str], line: int) -> None:
    # A trailing comment on the last line is output when it looks like output.
    text, comment = _split_comment("\n".join(pending))
    command = Command(text, line)
    if comment is not None and _looks_like_output(comment):
        command.shown.append(comment)
    commands.append(command)


# -- comparing ----------------------------------------------------------------------------


def _flatten(value: Any, into: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            flat = isinstance(item, list) and not any(isinstance(i, (dict, list)) for i in item)
            if flat or not isinstance(item, (dict, list)):
                into.append((key, item))
            _flatten(item, into)
    elif isinstance(value, list):
        for item in value:
            _flatten(item, into)


def _body(output: str) -> Any:
    """Parse the JSON body of an output, after the headers when `curl -i` printed them."""
    text = output
    if text.startswith("HTTP/"):
        text = text.replace("\r\n", "\n").split("\n\n", 1)[-1]
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        # Several JSON documents, one per line (a command run several times).
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def mismatches(shown: str, output: str, status: int | None) -> list[str]:
    """Say how `output` (and its HTTP status) differs from the `shown` output; [] if not."""
    problems: list[str] = []
    found = STATUS.match(shown)
    if found and status is not None and int(found.group(1)) != status:
        problems.append(f"status {status}, shown {found.group(1)}")
    for line in shown.splitlines():
        header = HEADER.match(line.strip())
        if header and not re.search(rf"(?im)^{header.group(1)}: ", output):
            problems.append(f"no {header.group(1)} header")
    wanted = [
        (key, json.loads(value))
        for key, value in PAIR.findall(shown)
        if key not in VOLATILE and "..." not in value
    ]
    if not wanted:
        return problems
    try:
        body = _body(output)
    except ValueError:
        return [*problems, f"output is not JSON: {output[:200]!r}"]
    actual: list[tuple[str, Any]] = []
    _flatten(body, actual)
    position = 0
    for key, value in wanted:
        for index in range(position, len(actual)):
            if actual[index] == (key, value):
                position = index + 1
                break
        else:
            got = [v for k, v in actual if k == key]
            problems.append(f'"{key}": {json.dumps(value)} not found in order (got {got[:5]})')
    return problems
