"""Input rules found by users after the readers were written (helper h19).

Control characters in a value (a NUL in a CSV cell, ``\\u0000`` in a JSONL string) reject their
record, naming line and field, in both formats; the progress total of a UTF-16 file counts its
records. The real command runs in a subprocess against an in-process sandbox where HTTP is
involved: "not sent" is what the server saw.
"""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

import pytest
from cli_helpers import SECRET_TOKEN, journal_lines, run_cli, update_args
from conftest import StartSandbox, sandbox_config

from growthhub_async.job import JobSettings, run_job
from growthhub_async.ratelimit import Rate
from growthhub_async.sources import Record, count_records, open_source


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


# -- the progress total ------------------------------------------------------------------------

# Characters whose UTF-16/32 code units hold a 0x0A or 0x0D byte (上 is U+4E0A, Ċ U+010A, ਊ
# U+0A0A, č U+010D): counting newline bytes counted each of them as a line.
TRICKY = "上Ċਊč"


def utf16_inputs() -> dict[str, str]:
    """Text of inputs whose records are not their lines: blank lines, multi-line cells."""
    jsonl = "".join(
        json.dumps({"contactId": f"j{n}", "firstName": TRICKY * n}, ensure_ascii=False)
        + "\n"
        + ("\n  \n" if n % 3 == 0 else "")
        for n in range(1, 13)
    )
    csv_text = "\r\n\r\ncontactId\tfirstName\taddress1\r\n" + "".join(
        f'c{n}\t{TRICKY}\t"1 Main St\r\nFlat {n}\r\n{TRICKY}"\r\n' + ("\r\n" if n % 4 == 0 else "")
        for n in range(1, 10)
    )
    return {"in.jsonl": jsonl, "in.txt": csv_text}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8"])
def test_the_progress_total_counts_records_in_utf16_and_multi_line_cells(
    tmp_path: Path, encoding: str
) -> None:
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-8": b""}
    for name, text in utf16_inputs().items():
        path = tmp_path / name
        path.write_bytes(bom[encoding] + text.encode(encoding))
        with open_source(str(path)) as source:
            items = list(source)
        assert all(isinstance(item, Record) for item in items), items
        assert count_records(str(path)) == len(items) == (12 if name == "in.jsonl" else 9)


async def test_the_progress_bar_of_a_utf16_excel_export_ends_at_its_total(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    sandbox = await start_sandbox(
        sandbox_config(tokens=frozenset({SECRET_TOKEN}), rate_limit=10_000, rate_window=1.0)
    )
    path = tmp_path / "in.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + utf16_inputs()["in.txt"].encode("utf-16-le"))
    err = io.StringIO()
    settings = JobSettings(
        input=str(path),
        out=str(tmp_path / "out.jsonl"),
        base_url=sandbox.base_url,
        rate=Rate(1000, 1.0),
        progress="bar",
        handle_signals=False,
    )
    result = await run_job(settings, token=SECRET_TOKEN, stdout=io.StringIO(), stderr=err)
    assert result.exit_status == 0, err.getvalue()
    assert "9/9 100.0%" in err.getvalue().rsplit("\r", 1)[-1]
    assert sandbox.history["c9"][-1]["address1"] == f"1 Main St\r\nFlat 9\r\n{TRICKY}"
