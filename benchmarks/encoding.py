"""Encoding: validate-and-encode cost per record of the documentation's full example body.

    .venv/bin/python -m benchmarks.encoding [--number 20000] [--repeat 7]

The body is the Update Contact example of the API documentation with every field set and nine
custom fields, one of each kind the spec lists (text, large text, single select, radio, numeric,
monetary, checkbox, multi select, file), built from the spec's own examples.

- ours: ``UpdateContactCodec.decode(line bytes)`` (msgspec: every field's type, enum, date and
  unknown-field checks) then ``.encode(update)``: what the command does per record;
- stdlib: the same dict built by hand in Python, then ``json.dumps(...).encode()``: no checks at
  all, the cheapest way to get the same body with the standard library;
- also shown: stdlib ``json.loads`` + ``json.dumps`` of the line (parse and re-encode, still no
  checks) and our encode alone.

Each figure is the best of ``--repeat`` timings of ``--number`` calls (``timeit``), in
microseconds per record. Writes benchmarks/results/encoding.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import busy_cpus, write_result
from growthhub_async.models import UpdateContactCodec

NAME = "encoding"

FILE_VALUE = {
    "f31175d4-2b06-4fc6-b7bc-74cd814c68cb": {
        "meta": {
            "fieldname": "1HeGizb13P0odwgOgKSs",
            "originalname": "IMG_20231215_164412935.jpg",
            "encoding": "7bit",
            "mimetype": "image/jpeg",
            "size": 1786611,
            "uuid": "f31175d4-2b06-4fc6-b7bc-74cd814c68cb",
        },
        "url": "https://services.leadconnectorhq.com/documents/download/w2M9qTZ0ZJz8rGt02jdJ",
        "documentId": "w2M9qTZ0ZJz8rGt02jdJ",
    }
}


def full_body() -> dict[str, Any]:
    """The documentation's example body, every field set, nine custom fields (built by hand)."""
    return {
        "firstName": "rosan",
        "lastName": "Deo",
        "name": "rosan Deo",
        "email": "rosan@deos.com",
        "phone": "+1 888-888-8888",
        "address1": "3535 1st St N",
        "city": "Dolomite",
        "state": "AL",
        "postalCode": "35061",
        "website": "https://www.tesla.com",
        "timezone": "America/Chihuahua",
        "dnd": True,
        "dndSettings": {
            "Call": {"status": "active", "message": "string", "code": "string"},
            "Email": {"status": "active", "message": "string", "code": "string"},
            "SMS": {"status": "active", "message": "string", "code": "string"},
            "WhatsApp": {"status": "active", "message": "string", "code": "string"},
            "GMB": {"status": "active", "message": "string", "code": "string"},
            "FB": {"status": "active", "message": "string", "code": "string"},
        },
        "inboundDndSettings": {"all": {"status": "active", "message": "string"}},
        "tags": ["nisi sint commodo amet", "consequat"],
        "customFields": [
            {"id": "6dvNaf7VhkQ9snc5vnjJ", "key": "my_custom_field", "field_value": "My Text"},
            {"id": "6dvNaf7VhkQ9snc5vnjK", "key": "my_large_text", "field_value": "My Text"},
            {
                "id": "6dvNaf7VhkQ9snc5vnjL",
                "key": "my_single_select",
                "field_value": "My Selected Option",
            },
            {"id": "6dvNaf7VhkQ9snc5vnjM", "key": "my_radio", "field_value": "My Selected Option"},
            {"id": "6dvNaf7VhkQ9snc5vnjN", "key": "my_numeric", "field_value": 100},
            {"id": "6dvNaf7VhkQ9snc5vnjO", "key": "my_monetary", "field_value": 100.5},
            {"id": "6dvNaf7VhkQ9snc5vnjP", "key": "my_checkbox", "field_value": ["test", "test2"]},
            {"id": "6dvNaf7VhkQ9snc5vnjQ", "key": "my_multi_select", "field_value": ["test"]},
            {"id": "6dvNaf7VhkQ9snc5vnjR", "key": "my_file", "field_value": FILE_VALUE},
        ],
        "source": "public api",
        "dateOfBirth": "1990-09-25",
        "country": "US",
        "assignedTo": "y0BeYjuRIlDwsDcOHOJo",
    }


def best_microseconds(func: Callable[[], object], number: int, repeat: int) -> float:
    """The best of ``repeat`` timings of ``number`` calls, in microseconds per call."""
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def measure(number: int, repeat: int) -> dict[str, float]:
    """Microseconds per record of each path."""
    codec = UpdateContactCodec()
    line = json.dumps(full_body()).encode()
    update = codec.decode(line)
    # Both paths must give the same body, or the comparison means nothing.
    if json.loads(codec.encode(update)) != full_body():
        raise SystemExit("our encoding of the full body differs from the hand-built dict")

    def ours() -> bytes:
        return codec.encode(codec.decode(line))

    def stdlib() -> bytes:
        return json.dumps(full_body()).encode()

    def stdlib_reencode() -> bytes:
        return json.dumps(json.loads(line)).encode()

    def ours_encode_only() -> bytes:
        return codec.encode(update)

    return {
        "oursDecodeValidateEncode": best_microseconds(ours, number, repeat),
        "stdlibBuildDictDumps": best_microseconds(stdlib, number, repeat),
        "stdlibLoadsDumps": best_microseconds(stdlib_reencode, number, repeat),
        "oursEncodeOnly": best_microseconds(ours_encode_only, number, repeat),
        "bodyBytes": len(line),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (for the tests)")
    parser.add_argument("--out", type=Path, help="the result file (default results/NAME.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.number, args.repeat = 200, 2
    busy = busy_cpus()
    m = measure(args.number, args.repeat)
    figures = {
        "number": args.number,
        "repeat": args.repeat,
        "microsecondsPerRecord": {k: round(v, 2) for k, v in m.items() if k != "bodyBytes"},
        "bodyBytes": m["bodyBytes"],
        "ratioOursToStdlib": round(m["oursDecodeValidateEncode"] / m["stdlibBuildDictDumps"], 3),
        "ratioOursToStdlibLoadsDumps": round(
            m["oursDecodeValidateEncode"] / m["stdlibLoadsDumps"], 3
        ),
        "pytestProcessesAtStart": busy,
    }
    path = write_result(NAME, figures, args.out)
    print(
        f"ours (decode + validate + encode) {m['oursDecodeValidateEncode']:.2f} us, "
        f"stdlib (build dict + json.dumps) {m['stdlibBuildDictDumps']:.2f} us: "
        f"ratio {figures['ratioOursToStdlib']}; stdlib loads+dumps "
        f"{m['stdlibLoadsDumps']:.2f} us; our encode alone {m['oursEncodeOnly']:.2f} us "
        f"({m['bodyBytes']} bytes); written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
