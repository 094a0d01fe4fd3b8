"""Every validation rule of the request model, table-driven: each case names the field it guards."""

from __future__ import annotations

import msgspec
import pytest

from growthhub_async import errors
from growthhub_async.models import (
    CustomField,
    DndChannel,
    DndSettings,
    UpdateContact,
    UpdateContactCodec,
    decode_update,
    encode_update,
)

# (case id, body, a fragment the message must contain: the field's path or name)
REJECTED = [
    ("unknown gender", b'{"gender":"male"}', "unknown field `gender`"),
    ("unknown companyName", b'{"companyName":"DGS"}', "unknown field `companyName`"),
    ("unknown locationId", b'{"locationId":"ve9"}', "unknown field `locationId`"),
    ("unknown contactId in body", b'{"contactId":"x"}', "unknown field `contactId`"),
    ("snake_case is not the wire name", b'{"first_name":"a"}', "unknown field `first_name`"),
    ("unknown nested channel", b'{"dndSettings":{"sms":{"status":"active"}}}', "`$.dndSettings`"),
    (
        "unknown key in channel",
        b'{"dndSettings":{"SMS":{"status":"active","until":"x"}}}',
        "`$.dndSettings.SMS`",
    ),
    ("unknown key in custom field", b'{"customFields":[{"id":"a","val":1}]}', "`val`"),
    ("firstName wrong type", b'{"firstName":1}', "`$.firstName`"),
    ("tags not a list", b'{"tags":"vip"}', "`$.tags`"),
    ("tag not a string", b'{"tags":["a",2]}', "`$.tags[1]`"),
    ("dnd not a bool", b'{"dnd":"true"}', "`$.dnd`"),
    (
        "dnd status enum",
        b'{"dndSettings":{"SMS":{"status":"paused"}}}',
        "`$.dndSettings.SMS.status`",
    ),
    ("dnd status required", b'{"dndSettings":{"Email":{}}}', "`$.dndSettings.Email`"),
    (
        "inbound has no permanent",
        b'{"inboundDndSettings":{"all":{"status":"permanent"}}}',
        "`$.inboundDndSettings.all.status`",
    ),
    ("postalCode not nullable", b'{"postalCode":null}', "`$.postalCode`"),
    ("country not nullable", b'{"country":null}', "`$.country`"),
    ("tags not nullable", b'{"tags":null}', "`$.tags`"),
    ("dnd not nullable", b'{"dnd":null}', "`$.dnd`"),
    ("dndSettings not nullable", b'{"dndSettings":null}', "`$.dndSettings`"),
    ("customFields not nullable", b'{"customFields":null}', "`$.customFields`"),
    ("country outside the list", b'{"country":"XX"}', "`$.country`"),
    ("country lower case", b'{"country":"us"}', "`$.country`"),
    ("country name", b'{"country":"United States"}', "`$.country`"),
    ("date day-first", b'{"dateOfBirth":"25-09-1990"}', "dateOfBirth"),
    ("date not real", b'{"dateOfBirth":"1990-02-30"}', "dateOfBirth"),
    ("date month 13", b'{"dateOfBirth":"13/01/1990"}', "dateOfBirth"),
    ("date mixed separators", b'{"dateOfBirth":"1990-09/25"}', "dateOfBirth"),
    ("date ISO datetime", b'{"dateOfBirth":"1990-09-25T00:00:00Z"}', "dateOfBirth"),
    ("date one-digit month", b'{"dateOfBirth":"1990-9-25"}', "dateOfBirth"),
    ("date year zero", b'{"dateOfBirth":"0000-01-01"}', "dateOfBirth"),
    ("date as object", b'{"dateOfBirth":{"y":1990}}', "`$.dateOfBirth`"),
    ("custom field without id", b'{"customFields":[{"field_value":"x"}]}', "`id`"),
    ("custom field id wrong type", b'{"customFields":[{"id":5}]}', "`$.customFields[0].id`"),
    (
        "custom field value bool",
        b'{"customFields":[{"id":"a","field_value":true}]}',
        "`$.customFields[0].field_value`",
    ),
    (
        "custom field value list of numbers",
        b'{"customFields":[{"id":"a","field_value":[1]}]}',
        "`$.customFields[0].field_value[0]`",
    ),
    (
        "second custom field bad",
        b'{"customFields":[{"id":"a"},{"id":"b","field_value":null}]}',
        "`$.customFields[1].field_value`",
    ),
    (
        "file upload with unknown key",
        b'{"customFields":[{"id":"a","field_value":{"u1":{"link":"x"}}}]}',
        "unknown field `link` - at `$.customFields[0].field_value",
    ),
    (
        "v3 key under the v2 setting",
        b'{"customFields":[{"id":"a","fieldValue":"x"}]}',
        "fieldValue",
    ),
    ("not an object", b'["firstName"]', "Expected `object`"),
]


@pytest.mark.parametrize(
    ("body", "fragment"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejected_with_message_naming_the_field(body: bytes, fragment: str) -> None:
    with pytest.raises(msgspec.ValidationError) as exc_info:
        msgspec.json.decode(body, type=UpdateContact)
    assert fragment in str(exc_info.value)
    # The codec path gives the same answer as the plain msgspec path.
    with pytest.raises(msgspec.ValidationError):
        decode_update(body)


ACCEPTED_DATES = [
    "1990/09/25",
    "09/25/1990",
    "1990-09-25",
    "09-25-1990",
    "1990.09.25",
    "09.25.1990",
    "1990_09_25",
    "09_25_1990",
    "2000-02-29",  # a leap day is a real date
]


@pytest.mark.parametrize("value", ACCEPTED_DATES)
def test_the_eight_date_formats_are_accepted(value: str) -> None:
    body = msgspec.json.encode({"dateOfBirth": value})
    assert decode_update(body).date_of_birth == value
    assert encode_update(decode_update(body)) == body


def test_date_check_also_guards_construction() -> None:
    with pytest.raises(ValueError, match="not a real date"):
        UpdateContact(date_of_birth="1990-02-30")
    with pytest.raises(ValueError, match="dateOfBirth"):
        UpdateContact(date_of_birth="30.12.1990")


def test_unset_is_omitted_and_none_is_null() -> None:
    assert encode_update(UpdateContact()) == b"{}"
    assert encode_update(UpdateContact(first_name="Rosan", email=None)) == (
        b'{"firstName":"Rosan","email":null}'
    )


def test_wire_names_are_the_apis() -> None:
    update = UpdateContact(
        first_name="a",
        postal_code="1",
        address1="x",
        assigned_to="u",
        dnd_settings=DndSettings(
            sms=DndChannel(status="active"), whatsapp=DndChannel(status="inactive")
        ),
        custom_fields=[CustomField(id="f", key="k", value="v")],
    )
    assert msgspec.json.decode(encode_update(update)) == {
        "firstName": "a",
        "address1": "x",
        "postalCode": "1",
        "dndSettings": {"SMS": {"status": "active"}, "WhatsApp": {"status": "inactive"}},
        "customFields": [{"id": "f", "key": "k", "field_value": "v"}],
        "assignedTo": "u",
    }


ROUND_TRIP = [
    b"{}",
    b'{"firstName":null,"lastName":null,"email":null,"dateOfBirth":null,"assignedTo":null}',
    b'{"tags":[],"customFields":[]}',
    b'{"customFields":[{"id":"a","field_value":1},{"id":"b","field_value":1.5},'
    b'{"id":"c","field_value":["x","y"]},{"id":"d","key":"k","field_value":""},'
    b'{"id":"e","field_value":{"u":{"meta":{"size":3,"uuid":"u"},"url":"https://x","documentId":"d"}}}]}',
    b'{"dndSettings":{"Call":{"status":"permanent","message":"m","code":"c"}},'
    b'"inboundDndSettings":{"all":{"status":"inactive","message":"x"}}}',
    b'{"country":"AX","dateOfBirth":"12.31.1999","dnd":false,"phone":"+1 888-888-8888"}',
    '{"firstName":"Ros\u00e1n \u6f22\u5b57 \U0001f600"}'.encode(),
]


@pytest.mark.parametrize("body", ROUND_TRIP)
def test_round_trip_is_the_same_json_object(body: bytes) -> None:
    assert msgspec.json.decode(encode_update(decode_update(body))) == msgspec.json.decode(body)


def test_codec_rejects_an_unknown_value_key_setting() -> None:
    with pytest.raises(ValueError, match="value_key"):
        UpdateContactCodec("value")  # type: ignore[arg-type]


# --- the exception tree --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (422, errors.UnprocessableEntity),
        (429, errors.RateLimited),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (418, errors.HTTPStatusError),
    ],
)
def test_error_for_status(status: int, cls: type[errors.HTTPStatusError]) -> None:
    assert errors.error_for_status(status) is cls


def test_errors_carry_status_messages_and_headers() -> None:
    exc = errors.UnprocessableEntity(
        422,
        ["property gender should not exist", "country must be valid"],
        headers={"X-RateLimit-Remaining": "9"},
        trace_id="t-1",
    )
    assert isinstance(exc, errors.HTTPStatusError)
    assert isinstance(exc, errors.GrowthHubError)
    assert exc.status_code == 422
    assert exc.messages == ("property gender should not exist", "country must be valid")
    assert exc.headers["X-RateLimit-Remaining"] == "9"
    assert exc.trace_id == "t-1"
    assert str(exc) == "HTTP 422: property gender should not exist; country must be valid"
    limited = errors.RateLimited(retry_after=2.5)
    assert limited.retry_after == 2.5
    assert str(limited) == "HTTP 429: Too Many Requests"
    assert isinstance(errors.Forbidden(403), errors.Unauthorized)
    assert issubclass(errors.RequestTimeout, errors.TransportError)
