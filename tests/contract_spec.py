"""The official contract, loaded from ../shared/contract/ for tests (never copied into the package).

``validator(name)`` gives an OpenAPI 3.0 validator for a schema of the Contacts spec, with its
relative ``$ref`` to ``../common/common-schemas.json`` resolved. ``strict=True`` makes every
object schema reject unknown properties, as the live API does (422 "property X should not exist").

The spec is wrong about two types, and the contract README records what the API really takes;
``_KNOWN_QUIRKS`` patches exactly those, so that everything else is judged by the spec as written:
- ``dateOfBirth`` is declared ``type: object`` but is a string (or null).
- Numeric and monetary custom fields declare ``field_value`` as ``type: object`` with examples
  ``100`` and ``100.5``: the value is a number.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

CONTRACT = Path(__file__).resolve().parents[1].parent / "shared" / "contract"
CONTACTS = CONTRACT / "apps" / "contacts.json"
COMMON = CONTRACT / "common" / "common-schemas.json"
COUNTRY_LIST = CONTRACT / "docs" / "country-list.md"


def load_json(path: Path) -> Any:
    """A spec document as plain data."""
    return json.loads(path.read_text(encoding="utf-8"))


def _patch_known_quirks(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    schemas["UpdateContactDto"]["properties"]["dateOfBirth"] = {"type": "string", "nullable": True}
    for name in ("NumericField", "MonetoryField"):
        schemas[name]["properties"]["field_value"] = {"type": "number"}


def _forbid_unknown(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _forbid_unknown(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_unknown(value)


@cache
def _registry(*, strict: bool) -> Registry[Any]:
    contacts = copy.deepcopy(load_json(CONTACTS))
    common = copy.deepcopy(load_json(COMMON))
    _patch_known_quirks(contacts)
    if strict:
        _forbid_unknown(contacts["components"]["schemas"])
    return Registry().with_resources(
        [
            (CONTACTS.as_uri(), Resource.from_contents(contacts, default_specification=DRAFT4)),
            (COMMON.as_uri(), Resource.from_contents(common, default_specification=DRAFT4)),
        ]
    )


def validator(name: str, *, strict: bool = False, document: Path = CONTACTS) -> OAS30Validator:
    """A validator for ``components.schemas[name]`` of ``document`` (the Contacts spec)."""
    ref = {"$ref": f"{document.as_uri()}#/components/schemas/{name}"}
    return OAS30Validator(ref, registry=_registry(strict=strict))


def schema(name: str, *, document: Path = CONTACTS) -> dict[str, Any]:
    """A schema of the spec as written (unpatched), for field-set comparisons."""
    result: dict[str, Any] = load_json(document)["components"]["schemas"][name]
    return result


def example_of(node: dict[str, Any], doc: dict[str, Any] | None = None) -> Any:
    """An instance built from the spec's ``example`` values (else the first enum value), following
    local ``$ref``s; properties with neither are left out."""
    doc = doc if doc is not None else load_json(CONTACTS)
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return example_of(doc["components"]["schemas"][name], doc)
    if "example" in node:
        return node["example"]
    if "enum" in node:
        return node["enum"][0]
    if node.get("type") == "object" and "properties" in node:
        built = {k: example_of(v, doc) for k, v in node["properties"].items()}
        return {k: v for k, v in built.items() if v is not None}
    if node.get("type") == "array" and "items" in node:
        return [example_of(node["items"], doc)]
    return None


def country_codes() -> set[str]:
    """The two-letter codes of the official country list."""
    codes = set()
    for row in COUNTRY_LIST.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) >= 2 and len(cells[0]) == 2 and cells[0].isalpha() and cells[0].isupper():
            codes.add(cells[0])
    return codes
