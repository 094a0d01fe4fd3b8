"""The sandbox judged by the official spec (../shared/contract/apps/contacts.json).

Request bodies are generated from the spec's ``UpdateContactDto`` itself: values of the declared
types (following ``$ref``, ``anyOf``, ``enum``, ``nullable``, the ``example`` values), plus
mutations the API must refuse (unknown properties, values of any JSON type in any field), plus
header variants (a bad token, no ``Version``) and malformed JSON. For each, the sandbox's status
must be one the operation declares (200/400/401/422: faults and 429 are off) and its body must
validate against the schema declared for that status.

One spec quirk is bridged, and only for the 200 body: ``CustomFieldSchema.value`` is declared
``string`` while the request side of the same spec takes numbers, string lists and file objects
for the same fields; the sandbox returns the value as written, so non-string values are checked
against what was sent instead.

The sandbox's validator is also held to the client's models: a body is accepted by the sandbox
exactly when ``UpdateContactCodec`` accepts it, so the client never sends what the sandbox
refuses, and never refuses what it would accept.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import TEST_TOKEN, StartSandbox, sandbox_config
from contract_spec import COMMON, CONTACTS, load_json, validator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from growthhub_async.models import UpdateContactCodec
from growthhub_async.sandbox import Sandbox
from growthhub_async.sandbox.validation import validate_update

SPEC = load_json(CONTACTS)
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
OPERATION = SPEC["paths"]["/contacts/{contactId}"]["put"]
DECLARED = {int(code) for code in OPERATION["responses"]}

_scalars = (
    st.none()
    | st.booleans()
    # Within JavaScript's safe range: beyond it the client refuses what the API would round
    # (models.SafeInt), while the sandbox, like the API, takes it.
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that the schema node declares (valid by the spec's own words)."""
    if "$ref" in node:
        return st.deferred(lambda: from_schema(SCHEMAS[node["$ref"].rsplit("/", 1)[-1]]))
    if "anyOf" in node:
        return st.one_of([from_schema(option) for option in node["anyOf"]])
    strategy: st.SearchStrategy[Any]
    if "enum" in node:
        strategy = st.sampled_from(node["enum"])
    elif node.get("type") == "string":
        strategy = st.text(max_size=12)
        if "example" in node:
            strategy = st.just(node["example"]) | strategy
    elif node.get("type") == "boolean":
        strategy = st.booleans()
    elif node.get("type") == "array":
        strategy = st.lists(from_schema(node.get("items", {})), max_size=3)
    elif node.get("type") == "object" and "properties" in node:
        required = set(node.get("required", ()))
        strategy = st.fixed_dictionaries(
            {k: from_schema(v) for k, v in node["properties"].items() if k in required},
            optional={
                k: from_schema(v) for k, v in node["properties"].items() if k not in required
            },
        )
    elif "example" in node:
        # Untyped or "object" with a scalar example (dateOfBirth, numeric custom fields).
        strategy = st.just(node["example"]) | json_values
    else:
        strategy = json_values
    if node.get("nullable"):
        strategy = strategy | st.none()
    return strategy


valid_shaped = from_schema(SCHEMAS["UpdateContactDto"])


@st.composite
def update_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A body from the spec, sometimes broken: an unknown key, a field of the wrong type."""
    body: dict[str, Any] = draw(valid_shaped)
    mutation = draw(st.sampled_from(["none", "none", "unknown", "retype", "both"]))
    if mutation in ("unknown", "both"):
        body[draw(st.sampled_from(["gender", "companyName", "locationId", "foo"]))] = draw(
            json_values
        )
    if mutation in ("retype", "both"):
        body[draw(st.sampled_from(sorted(SCHEMAS["UpdateContactDto"]["properties"])))] = draw(
            json_values
        )
    return body


def _has_both_value_keys(body: dict[str, Any]) -> bool:
    fields = body.get("customFields")
    return isinstance(fields, list) and any(
        isinstance(f, dict) and "field_value" in f and "fieldValue" in f for f in fields
    )


CODEC = UpdateContactCodec()


def _one_spelling(body: dict[str, Any]) -> dict[str, Any]:
    """The body with every ``fieldValue`` spelled ``field_value`` (the sandbox takes both)."""
    fields = body.get("customFields")
    if not isinstance(fields, list):
        return body
    renamed = [
        {("field_value" if k == "fieldValue" else k): v for k, v in f.items()}
        if isinstance(f, dict)
        else f
        for f in fields
    ]
    return {**body, "customFields": renamed}


@settings(max_examples=400, deadline=None)
@given(body=update_bodies())
def test_sandbox_accepts_exactly_what_the_models_accept(body: dict[str, Any]) -> None:
    problems = validate_update(body)
    if _has_both_value_keys(body):
        assert problems
        return
    try:
        CODEC.convert(_one_spelling(body))
        models_accept = True
    except msgspec.ValidationError:
        models_accept = False
    assert (problems == []) is models_accept, problems


VALIDATORS = {
    200: validator("UpdateContactsSuccessfulResponseDto"),
    400: validator("BadRequestDTO", document=COMMON),
    401: validator("UnauthorizedDTO", document=COMMON),
    422: validator("UnprocessableDTO", document=COMMON),
}


def _bridge_custom_field_values(answer: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """The 200 body with non-string custom field values checked and replaced (see the top)."""
    contact = answer.get("contact", {})
    written = {
        f["id"]: f.get("field_value", f.get("fieldValue"))
        for f in sent.get("customFields", ())
        if ("field_value" in f or "fieldValue" in f)
    }
    for item in contact.get("customFields", ()):
        if not isinstance(item.get("value"), str):
            if item["id"] in written:
                assert item["value"] == written[item["id"]]
            item["value"] = json.dumps(item["value"])
    return answer


@pytest.fixture
async def conformance_sandbox(start_sandbox: StartSandbox) -> Sandbox:
    """A sandbox whose budget no generated run can exhaust."""
    return await start_sandbox(sandbox_config(rate_limit=1_000_000, rate_window=1.0))


HEADER_VARIANTS = st.sampled_from(["ok", "ok", "ok", "ok", "bad-token", "no-version", "garbled"])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=update_bodies(), variant=HEADER_VARIANTS, contact_id=st.sampled_from(["a", "b"]))
async def test_every_answer_is_declared_by_the_spec(
    conformance_sandbox: Sandbox,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    variant: str,
    contact_id: str,
) -> None:
    headers = {"Authorization": f"Bearer {TEST_TOKEN}", "Version": "2021-07-28"}
    data = msgspec.json.encode(body)
    if variant == "bad-token":
        headers["Authorization"] = "Bearer not-the-token"
    elif variant == "no-version":
        del headers["Version"]
    elif variant == "garbled":
        data = data[:-1]
    headers["Content-Type"] = "application/json"
    url = f"{conformance_sandbox.base_url}/contacts/{contact_id}"
    async with http.put(url, data=data, headers=headers) as resp:
        status = resp.status
        answer = await resp.json()
    assert status in DECLARED
    if status == 200:
        answer = _bridge_custom_field_values(answer, body)
    errors = sorted(VALIDATORS[status].iter_errors(answer), key=str)
    assert not errors, errors[0].message
    if variant == "ok":
        assert status == (422 if validate_update(body) else 200)
