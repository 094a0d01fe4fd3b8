"""Validation of Update Contact bodies as the API does it: every problem reported, in one go.

The API is a NestJS service (``ValidationPipe`` with ``whitelist`` and
``forbidNonWhitelisted``, class-validator underneath). It answers a bad body with 422 and a list
of messages, one per problem, in class-validator's words. Nested problems carry their parent's
path in front, the way NestJS flattens nested errors: ``dndSettings.Call.status must be one of
the following values: active, inactive, permanent`` and ``dndSettings.property Foo should not
exist``.

What is valid is what :mod:`growthhub_async.models` accepts, so that the client's local checks
and the sandbox agree (a test holds them to it); msgspec stops at the first error, hence this
walker. One deliberate difference: the custom field value may be spelled ``field_value`` or
``fieldValue`` here (the real API takes both), where a codec uses one spelling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from growthhub_async.models import COUNTRY_CODES, DATE_OF_BIRTH_FORMATS, _check_date_of_birth

__all__ = ["VALUE_KEYS", "validate_update"]

VALUE_KEYS: Final = ("field_value", "fieldValue")

_Check = Callable[[str, Any, list[str]], None]

_DATE_MESSAGE: Final = "must be a real date in one of the formats " + ", ".join(
    DATE_OF_BIRTH_FORMATS
)


def _unknown(prefix: str, name: str, out: list[str]) -> None:
    out.append(f"{prefix}property {name} should not exist")


def _string(nullable: bool) -> _Check:
    def check(path: str, value: Any, out: list[str]) -> None:
        if isinstance(value, str) or (value is None and nullable):
            return
        out.append(f"{path} must be a string")

    return check


def _boolean(path: str, value: Any, out: list[str]) -> None:
    if type(value) is not bool:
        out.append(f"{path} must be a boolean value")


def _integer(path: str, value: Any, out: list[str]) -> None:
    if type(value) is not int:
        out.append(f"{path} must be an integer number")


def _enum(values: tuple[str, ...]) -> _Check:
    message = "must be one of the following values: " + ", ".join(values)

    def check(path: str, value: Any, out: list[str]) -> None:
        if not (isinstance(value, str) and value in values):
            out.append(f"{path} {message}")

    return check


def _object(fields: dict[str, _Check], required: tuple[str, ...] = ()) -> _Check:
    """A nested object: unknown keys and every field checked; missing required ones too."""

    def check(path: str, value: Any, out: list[str]) -> None:
        if type(value) is not dict:
            out.append(f"{path} must be an object")
            return
        prefix = f"{path}."
        for key, item in value.items():
            field_check = fields.get(key)
            if field_check is None:
                _unknown(prefix, key, out)
            else:
                field_check(prefix + key, item, out)
        for key in required:
            if key not in value:
                fields[key](prefix + key, _MISSING, out)

    return check


class _Missing:
    """A required field that is absent; fails every check, as ``undefined`` does."""


_MISSING: Final = _Missing()


def _string_array(path: str, value: Any, out: list[str]) -> None:
    if type(value) is not list:
        out.append(f"{path} must be an array")
    elif not all(isinstance(item, str) for item in value):
        out.append(f"each value in {path} must be a string")


def _date_of_birth(path: str, value: Any, out: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        out.append(f"{path} must be a string")
        return
    try:
        _check_date_of_birth(value)
    except ValueError:
        out.append(f"{path} {_DATE_MESSAGE}")


def _country(path: str, value: Any, out: list[str]) -> None:
    if not (isinstance(value, str) and value in COUNTRY_CODES):
        out.append(f"{path} must be one of the codes of the country list")


_DND_CHANNEL: Final = _object(
    {
        "status": _enum(("active", "inactive", "permanent")),
        "message": _string(nullable=False),
        "code": _string(nullable=False),
    },
    required=("status",),
)
_INBOUND_CHANNEL: Final = _object(
    {"status": _enum(("active", "inactive")), "message": _string(nullable=False)},
    required=("status",),
)
_UPLOADED_FILE: Final = _object(
    {
        "meta": _object(
            {
                "fieldname": _string(nullable=False),
                "originalname": _string(nullable=False),
                "encoding": _string(nullable=False),
                "mimetype": _string(nullable=False),
                "size": _integer,
                "uuid": _string(nullable=False),
            }
        ),
        "url": _string(nullable=False),
        "documentId": _string(nullable=False),
    }
)


def _custom_value(path: str, value: Any, out: list[str]) -> None:
    # Text/select/radio: a string; numeric/monetary: a number; checkbox/multi select: a list of
    # strings; file: {uuid: uploaded file}. Booleans and null are none of these.
    kind = type(value)
    if kind is str or kind is int or kind is float:
        return
    if kind is list:
        if not all(isinstance(item, str) for item in value):
            out.append(f"each value in {path} must be a string")
        return
    if kind is dict:
        for uuid, file in value.items():
            _UPLOADED_FILE(f"{path}.{uuid}", file, out)
        return
    out.append(
        f"{path} must be a string, a number, an array of strings or an object of uploaded files"
    )


_ID: Final = _string(nullable=False)


def _custom_field(path: str, value: Any, out: list[str]) -> None:
    if type(value) is not dict:
        out.append(f"{path} must be an object")
        return
    prefix = f"{path}."
    value_key_seen = False
    for key, item in value.items():
        if key in ("id", "key"):
            _ID(prefix + key, item, out)
        elif key in VALUE_KEYS and not value_key_seen:
            value_key_seen = True
            _custom_value(prefix + key, item, out)
        else:
            # A second spelling of the value in the same item is as unknown as any other key.
            _unknown(prefix, key, out)
    if "id" not in value:
        out.append(f"{prefix}id must be a string")


def _custom_fields(path: str, value: Any, out: list[str]) -> None:
    if type(value) is not list:
        out.append(f"{path} must be an array")
        return
    for index, item in enumerate(value):
        _custom_field(f"{path}.{index}", item, out)


_NULLABLE_STRING: Final = _string(nullable=True)
_STRING: Final = _string(nullable=False)

# UpdateContactDto, field by field (../shared/contract/apps/contacts.json).
_FIELDS: Final[dict[str, _Check]] = {
    "firstName": _NULLABLE_STRING,
    "lastName": _NULLABLE_STRING,
    "name": _NULLABLE_STRING,
    "email": _NULLABLE_STRING,
    "phone": _NULLABLE_STRING,
    "address1": _NULLABLE_STRING,
    "city": _NULLABLE_STRING,
    "state": _NULLABLE_STRING,
    "postalCode": _STRING,
    "website": _NULLABLE_STRING,
    "timezone": _NULLABLE_STRING,
    "dnd": _boolean,
    "dndSettings": _object(
        {
            "Call": _DND_CHANNEL,
            "Email": _DND_CHANNEL,
            "SMS": _DND_CHANNEL,
            "WhatsApp": _DND_CHANNEL,
            "GMB": _DND_CHANNEL,
            "FB": _DND_CHANNEL,
        }
    ),
    "inboundDndSettings": _object({"all": _INBOUND_CHANNEL}),
    "tags": _string_array,
    "customFields": _custom_fields,
    "source": _NULLABLE_STRING,
    "dateOfBirth": _date_of_birth,
    "country": _country,
    "assignedTo": _NULLABLE_STRING,
}


def validate_update(body: dict[str, Any]) -> list[str]:
    """The 422 messages for an Update Contact body (a parsed JSON object); empty when valid.

    Unknown top-level properties come first, in body order (as the API lists them), then the
    problems of known fields, in body order.
    """
    unknown: list[str] = []
    problems: list[str] = []
    fields = _FIELDS
    for key, value in body.items():
        check = fields.get(key)
        if check is None:
            _unknown("", key, unknown)
        else:
            check(key, value, problems)
    if unknown:
        unknown.extend(problems)
        return unknown
    return problems
