"""The official spec is the judge: what we encode validates, what it declares we decode."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from contract_spec import (
    COMMON,
    country_codes,
    example_of,
    load_json,
    schema,
    validator,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from growthhub_async.models import (
    COUNTRY_CODES,
    AttributionSource,
    Contact,
    CustomField,
    DndChannel,
    DndSettings,
    InboundDndChannel,
    InboundDndSettings,
    UpdateContact,
    UpdateContactCodec,
    UploadedFile,
    UploadedFileMeta,
    decode_error_body,
    decode_response,
    decode_update,
    encode_update,
)


def wire_names(struct: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct)}


# --- field sets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("struct", "spec_name"),
    [
        (UpdateContact, "UpdateContactDto"),
        (DndSettings, "DndSettingsSchema"),
        (DndChannel, "DndSettingSchema"),
        (InboundDndSettings, "InboundDndSettingsSchema"),
        (InboundDndChannel, "InboundDndSettingSchema"),
        (CustomField, "TextField"),
    ],
)
def test_field_set_equals_spec(struct: type[msgspec.Struct], spec_name: str) -> None:
    assert wire_names(struct) == set(schema(spec_name)["properties"])


@pytest.mark.parametrize(
    ("struct", "spec_name"),
    [(DndChannel, "DndSettingSchema"), (InboundDndChannel, "InboundDndSettingSchema")],
)
def test_enums_equal_spec(struct: type[msgspec.Struct], spec_name: str) -> None:
    (status,) = [f for f in msgspec.structs.fields(struct) if f.name == "status"]
    assert set(status.type.__args__) == set(schema(spec_name)["properties"]["status"]["enum"])


def test_every_custom_field_kind_has_the_same_keys() -> None:
    kinds = [ref["$ref"].rsplit("/", 1)[-1] for ref in _custom_field_any_of()]
    assert len(kinds) == 9
    for kind in kinds:
        assert set(schema(kind)["properties"]) == wire_names(CustomField), kind
        assert schema(kind).get("required") == ["id"], kind


def _custom_field_any_of() -> list[dict[str, str]]:
    items: list[dict[str, str]] = schema("UpdateContactDto")["properties"]["customFields"]["items"][
        "anyOf"
    ]
    return items


def test_country_codes_equal_the_official_list() -> None:
    assert set(COUNTRY_CODES) == country_codes()
    assert len(COUNTRY_CODES) > 240


@pytest.mark.parametrize("name", sorted(schema("UpdateContactDto")["properties"]))
def test_null_accepted_exactly_where_spec_says_nullable(name: str) -> None:
    nullable = schema("UpdateContactDto")["properties"][name].get("nullable", False)
    body = msgspec.json.encode({name: None})
    if nullable:
        assert encode_update(decode_update(body)) == body
    else:
        with pytest.raises(msgspec.ValidationError, match=f"got `null` - at `\\$.{name}`"):
            decode_update(body)


# --- what we encode validates against UpdateContactDto (unknown properties are errors) ---------

FULL = UpdateContact(
    first_name="Rosan",
    last_name=None,
    name="Rosan Deo",
    email="rosan@deos.com",
    phone="+1 888-888-8888",
    address1="3535 1st St N",
    city="Dolomite",
    state="AL",
    postal_code="35061",
    website="https://www.tesla.com",
    timezone="America/Chihuahua",
    dnd=True,
    dnd_settings=DndSettings(
        call=DndChannel(status="active", message="no calls", code="C1"),
        email=DndChannel(status="inactive"),
        sms=DndChannel(status="permanent"),
        whatsapp=DndChannel(status="active"),
        gmb=DndChannel(status="inactive"),
        fb=DndChannel(status="active"),
    ),
    inbound_dnd_settings=InboundDndSettings(all=InboundDndChannel(status="active", message="m")),
    tags=["nisi sint commodo amet", "consequat"],
    custom_fields=[
        CustomField(id="6dvNaf7VhkQ9snc5vnjJ", key="text", value="My Text"),
        CustomField(id="a", value=100),
        CustomField(id="b", value=100.5),
        CustomField(id="c", value=["test", "test2"]),
        CustomField(
            id="d",
            value={
                "f31175d4": UploadedFile(
                    meta=UploadedFileMeta(fieldname="x", originalname="a.jpg", size=17),
                    url="https://example.invalid/doc",
                    document_id="w2M9",
                )
            },
        ),
        CustomField(id="e"),
    ],
    source="public api",
    date_of_birth="1990-09-25",
    country="US",
    assigned_to="y0BeYjuRIlDwsDcOHOJo",
)

HAND_PICKED = [
    UpdateContact(),
    UpdateContact(first_name="Rosan", tags=["vip"]),
    UpdateContact(email=None, phone=None, date_of_birth=None),
    UpdateContact(dnd_settings=DndSettings(sms=DndChannel(status="inactive"))),
    FULL,
]


@pytest.mark.parametrize("update", HAND_PICKED)
def test_hand_picked_bodies_validate_strictly(update: UpdateContact) -> None:
    validator("UpdateContactDto", strict=True).validate(msgspec.json.decode(encode_update(update)))


def test_strict_validator_catches_what_the_api_rejects() -> None:
    # Guards the guard: the strict spec must fail an unknown property and a wrong enum.
    strict = validator("UpdateContactDto", strict=True)
    assert not strict.is_valid({"gender": "male"})
    assert not strict.is_valid({"dndSettings": {"SMS": {"status": "paused"}}})
    assert not strict.is_valid({"customFields": [{"id": "a", "fieldValue": "x"}]})
    assert strict.is_valid({"customFields": [{"id": "a", "field_value": "x"}]})


def test_fieldvalue_setting_renames_only_the_value_key() -> None:
    v3 = UpdateContactCodec("fieldValue")
    body = msgspec.json.decode(v3.encode(FULL))
    assert all("field_value" not in cf for cf in body["customFields"])
    assert body["customFields"][0] == {
        "id": "6dvNaf7VhkQ9snc5vnjJ",
        "key": "text",
        "fieldValue": "My Text",
    }
    assert v3.decode(v3.encode(FULL)) == FULL
    with pytest.raises(msgspec.ValidationError, match="unknown field `field_value`"):
        v3.decode(encode_update(FULL))
    with pytest.raises(msgspec.ValidationError, match=r"`\$.customFields\[0\].fieldValue`"):
        v3.decode(b'{"customFields":[{"id":"a","fieldValue":true}]}')


# --- hypothesis: any UpdateContact we can build encodes to a body the spec accepts --------------

text = st.text(max_size=12)
DATE_FORMATS = [f"%Y{s}%m{s}%d" for s in "/-._"] + [f"%m{s}%d{s}%Y" for s in "/-._"]
dates = st.builds(
    lambda d, f: d.strftime(f),
    st.dates(min_value=dt.date(1000, 1, 1), max_value=dt.date(9999, 12, 31)),
    st.sampled_from(DATE_FORMATS),
)
dnd_channel = st.builds(
    DndChannel,
    status=st.sampled_from(["active", "inactive", "permanent"]),
    message=st.one_of(st.just(msgspec.UNSET), text),
    code=st.one_of(st.just(msgspec.UNSET), text),
)
maybe_channel = st.one_of(st.just(msgspec.UNSET), dnd_channel)
uploaded = st.builds(
    UploadedFile,
    meta=st.one_of(
        st.just(msgspec.UNSET),
        st.builds(UploadedFileMeta, originalname=text, size=st.integers(0, 2**53 - 1)),
    ),
    url=st.one_of(st.just(msgspec.UNSET), text),
)
custom_value = st.one_of(
    st.just(msgspec.UNSET),
    text,
    st.integers(-(2**53 - 1), 2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(text, max_size=3),
    st.dictionaries(text, uploaded, max_size=2),
)


def opt(strategy: st.SearchStrategy[Any], nullable: bool = True) -> st.SearchStrategy[Any]:
    choices = [st.just(msgspec.UNSET), strategy]
    if nullable:
        choices.append(st.none())
    return st.one_of(*choices)


updates = st.builds(
    UpdateContact,
    first_name=opt(text),
    last_name=opt(text),
    name=opt(text),
    email=opt(text),
    phone=opt(text),
    address1=opt(text),
    city=opt(text),
    state=opt(text),
    postal_code=opt(text, nullable=False),
    website=opt(text),
    timezone=opt(text),
    dnd=opt(st.booleans(), nullable=False),
    dnd_settings=opt(
        st.builds(
            DndSettings,
            call=maybe_channel,
            email=maybe_channel,
            sms=maybe_channel,
            whatsapp=maybe_channel,
            gmb=maybe_channel,
            fb=maybe_channel,
        ),
        nullable=False,
    ),
    inbound_dnd_settings=opt(
        st.builds(
            InboundDndSettings,
            all=opt(
                st.builds(InboundDndChannel, status=st.sampled_from(["active", "inactive"])),
                nullable=False,
            ),
        ),
        nullable=False,
    ),
    tags=opt(st.lists(text, max_size=4), nullable=False),
    custom_fields=opt(
        st.lists(
            st.builds(CustomField, id=text, key=opt(text, nullable=False), value=custom_value),
            max_size=4,
        ),
        nullable=False,
    ),
    source=opt(text),
    date_of_birth=opt(dates),
    country=opt(st.sampled_from(sorted(COUNTRY_CODES)), nullable=False),
    assigned_to=opt(text),
)


@settings(max_examples=300, deadline=None)
@given(updates)
def test_generated_bodies_validate_and_round_trip(update: UpdateContact) -> None:
    body = encode_update(update)
    validator("UpdateContactDto", strict=True).validate(msgspec.json.decode(body))
    assert decode_update(body) == update
    assert encode_update(decode_update(body)) == body


# --- what the spec says the server answers, we decode ------------------------------------------


def test_spec_200_example_decodes() -> None:
    example = example_of(schema("UpdateContactsSuccessfulResponseDto"))
    validator("UpdateContactsSuccessfulResponseDto").validate(example)
    resp = decode_response(msgspec.json.encode(example))
    assert resp.succeded is True
    assert resp.succeeded is True
    contact = resp.contact
    assert contact is not None
    spec_contact = example["contact"]
    assert contact.id == spec_contact["id"]
    assert contact.first_name_lower_case == spec_contact["firstNameLowerCase"]
    assert contact.tags == spec_contact["tags"]
    assert contact.custom_fields is not None
    assert contact.custom_fields[0].id == spec_contact["customFields"][0]["id"]
    assert contact.custom_fields[0].value == spec_contact["customFields"][0]["value"]
    assert contact.attribution_source is not None
    assert contact.attribution_source.gclid == spec_contact["attributionSource"]["gclid"]
    assert contact.last_attribution_source == contact.attribution_source
    assert contact.dnd_settings is not None
    assert contact.dnd_settings.sms is not None


def test_contact_model_covers_every_spec_field() -> None:
    assert wire_names(Contact) == set(schema("GetContectByIdSchema")["properties"])
    assert wire_names(AttributionSource) == set(schema("AttributionSource")["properties"])


def test_response_tolerates_new_fields_nulls_and_the_correct_spelling() -> None:
    resp = decode_response(
        b'{"succeeded":true,"traceId":"t","contact":{"id":"x","newField":{"a":1},'
        b'"email":null,"customFields":[{"id":"c","value":["a"]}]}}'
    )
    assert resp.succeded is True
    assert resp.contact is not None
    assert resp.contact.email is None
    assert resp.contact.custom_fields is not None
    assert resp.contact.custom_fields[0].value == ["a"]


@pytest.mark.parametrize(
    ("name", "messages"),
    [
        ("BadRequestDTO", ["Bad Request"]),
        ("UnauthorizedDTO", ["Invalid token: access token is invalid"]),
        ("UnprocessableDTO", ["Unprocessable Entity"]),
    ],
)
def test_spec_error_examples_decode(name: str, messages: list[str]) -> None:
    doc = load_json(COMMON)
    example = example_of(doc["components"]["schemas"][name], doc)
    body = decode_error_body(msgspec.json.encode(example))
    assert body is not None
    assert body.status_code == example["statusCode"]
    assert body.messages == messages


def test_error_body_variants() -> None:
    body = decode_error_body(
        b'{"statusCode":422,"message":["property gender should not exist"],'
        b'"error":"Unprocessable Entity","traceId":"abc"}'
    )
    assert body is not None
    assert body.messages == ["property gender should not exist"]
    assert body.trace_id == "abc"
    assert decode_error_body(b"<html><body>502 Bad Gateway</body></html>") is None
    assert decode_error_body(b'{"statusCode":404,"message":"Contact not found"}') is not None
