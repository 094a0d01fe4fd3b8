"""Input rules found by users after the readers were written (helper h19).

Control characters in a value (a NUL in a CSV cell, ``\\u0000`` in a JSONL string) reject their
record, naming line and field, in both formats; the progress total of a UTF-16 file counts its
records. The real command runs in a subprocess against an in-process sandbox where HTTP is
involved: "not sent" is what the server saw.
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import SECRET_TOKEN, journal_lines, run_cli, update_args
from conftest import StartSandbox, sandbox_config


async def test_control_characters_reject_their_record_in_csv_and_jsonl(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await start_sandbox(
        sandbox_config(tokens=frozenset({SECRET_TOKEN}), rate_limit=10_000, rate_window=1.0)
    )
    csv_file = tmp_path / "in.csv"
    csv_file.write_bytes(
        b"contactId,firstName,address1,customFields.cfA\n"
        b'c1,"Ada\x00Lovelace",,\n'  # a NUL, raw, in a quoted cell
        b"c2,Bob,,\x01x\n"  # another C0 control in a custom field
        b'c3,Cy,"1 Main St\r\nFlat\t2",\n'  # line break and tab: text, sent
        b'c4,Di,,"json:""a\\u0000b"""\n'  # a NUL escaped inside a JSON cell
    )
    jsonl_file = tmp_path / "in.jsonl"
    jsonl_file.write_text(
        "\n".join(
            json.dumps(record)
            for record in (
                {"contactId": "j1", "firstName": "Ada\u0000Lovelace"},
                {"contactId": "j2", "tags": ["ok", "bell\u0007"]},
                {"contactId": "j3", "address1": "1 Main St\nFlat\t2"},
                {"contactId": "j4", "customFields": [{"id": "cfA", "field_value": "\u009b"}]},
            )
        )
        + "\n"
    )
    expected = {
        "c1": "line 2: control character U+0000 (not text a field can hold) at position 4 in"
        " column `firstName`",
        "c2": "line 3: control character U+0001 (not text a field can hold) at position 1 in"
        " column `customFields.cfA`",
        "c4": "line 6: control character U+0000 (not text a field can hold) at position 2 -"
        " at `$` in column `customFields.cfA`",
        "j1": "line 1: control character U+0000 (not text a field can hold) at position 4 -"
        " at `$.firstName`",
        "j2": "line 2: control character U+0007 (not text a field can hold) at position 5 -"
        " at `$.tags[1]`",
        "j4": "line 4: control character U+009B (not text a field can hold) at position 1 -"
        " at `$.customFields[0].field_value`",
    }
    for data in (csv_file, jsonl_file):
        out = tmp_path / f"{data.name}.out"
        ran = await run_cli(*update_args(data, out, sandbox.base_url, rate="1000/1s"))
        assert ran.status == 1, ran.stderr  # some records were not updated
        outcomes = {o["contactId"]: o for o in journal_lines(out)}
        for contact, outcome in outcomes.items():
            if contact in expected:
                assert outcome["status"] == "rejected"
                assert outcome["error"] == expected[contact]
            else:
                assert outcome["status"] == "updated", outcome
    attempts = sandbox.stats()["attempts"]
    assert set(attempts) == {"c3", "j3"}  # nothing else reached the server
    # The line break as the file holds it (CRLF in the CSV's quoted cell), the tab kept.
    assert sandbox.history["c3"][-1]["address1"] == "1 Main St\r\nFlat\t2"
    assert sandbox.history["j3"][-1]["address1"] == "1 Main St\nFlat\t2"
