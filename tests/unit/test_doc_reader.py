"""The reader of the documents' shell examples: what counts as shown output, and the check."""

from __future__ import annotations

from pathlib import Path

from tests.support.doc_examples import mismatches, parse

TASK = (
    '{"id":"primes-1","status":"COMPLETED","created_at":"2026-12-04T15:06:17.491Z",'
    '"result":{"below":10,"count":4},"progress":null,"root_causes":["a"]}'
)


def test_a_field_shown_with_another_value_is_a_mismatch() -> None:
    shown = '{"id": "primes-1", ..., "progress": 100, ...}'
    assert mismatches(shown, TASK, 200) == ['"progress": 100 not found in order (got [None])']


def test_times_elisions_nested_fields_and_lists_compare_as_shown() -> None:
    shown = (
        '{"id": "primes-1", "status": "COMPLETED", "created_at": "2020-01-01T00:00:00Z", '
        '"result": {"below": 10, "count": 4}, "progress": null, "root_causes": ["a"]}'
    )
    assert mismatches(shown, TASK, 200) == []
    assert mismatches('{"root_causes": ["b"]}', TASK, 200) != []


def test_fields_must_come_in_the_order_shown() -> None:
    assert mismatches('{"progress": null, "id": "primes-1"}', TASK, 200) != []


def test_a_shown_status_code_and_header_are_checked() -> None:
    assert mismatches("201 {...}", "{}", 409) == ["status 409, shown 201"]
    headers = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[{"id": "a"}]'
    assert mismatches('Link: <...>; rel="next"\n[{"id": "a"}]', headers, 200) == ["no Link header"]


def test_output_comments_belong_to_their_command_and_remarks_do_not(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- not run: a server command -->\n"
        "```bash\nmake run\n```\n\n"
        "```bash\n"
        "# a remark before a command\n"
        "curl -s -X POST localhost:3000/api/tasks -d '{\n"
        '  "id": "a"}\'   # the body spans lines\n'
        'curl -s localhost:3000/api/tasks/a/status   # {"id": "a"}\n'
        "curl -s localhost:3000/api/tasks/a\n"
        '# 200 {"id": "a",\n'
        '#  "status": "QUEUED"}\n'
        "```\n\n"
        '```json\n{"id": "a", "status": "QUEUED"}\n```\n'
    )
    skipped, block = parse(doc, tmp_path)
    assert skipped.skip == "a server command"
    assert block.skip is None
    submit, status, get = block.commands
    assert submit.text.endswith('"id": "a"}\'') and submit.shown == []
    assert status.expects == '{"id": "a"}'
    assert get.expects.splitlines() == [
        '200 {"id": "a",',
        '"status": "QUEUED"}',
        '{"id": "a", "status": "QUEUED"}',
    ]
