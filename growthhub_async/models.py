"""Wire models of Update Contact (``PUT /contacts/{contactId}``), built on msgspec.

The request side is strict, so that a body the API would answer with 422 never leaves the
machine: ``msgspec.json.decode(data, type=UpdateContact)`` raises ``msgspec.ValidationError``
naming the field path for an unknown field, a wrong type or enum value, ``null`` on a field the
spec does not mark nullable, a country outside the official list, a ``dateOfBirth`` that is not in
one of the eight documented formats or not a real date, and a custom field without ``id``.

"Leave unchanged" and "clear it" are different things: a field not given is ``msgspec.UNSET`` and
omitted from the JSON; ``None`` is sent as ``null`` (accepted only where the spec allows null).

The response side is lenient: every field is optional and fields the server adds are ignored.

Contract: ../shared/contract/apps/contacts.json, ``UpdateContactDto`` and
``UpdateContactsSuccessfulResponseDto``; quirks in ../shared/contract/README.md.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

__all__ = [
    "COUNTRY_CODES",
    "DATE_OF_BIRTH_FORMATS",
    "AttributionSource",
    "Contact",
    "ContactCustomField",
    "Country",
    "CustomField",
    "CustomFieldValue",
    "CustomFieldValueKey",
    "DndChannel",
    "DndSettings",
    "ErrorBody",
    "InboundDndChannel",
    "InboundDndSettings",
    "UpdateContact",
    "UpdateContactCodec",
    "UpdateContactResponse",
    "UploadedFile",
    "UploadedFileMeta",
    "decode_error_body",
    "decode_response",
    "decode_update",
    "encode_update",
]

# The official country list (../shared/contract/docs/country-list.md), two-letter codes. A test
# checks this set against the document, so a change there fails the suite rather than drifting.
# fmt: off
Country: TypeAlias = Literal[
    "AF", "AX", "AL", "DZ", "AS", "AD", "AO", "AI", "AQ", "AG", "AR", "AM", "AW", "AU", "AT",
    "AZ", "BS", "BH", "BD", "BB", "BY", "BE", "BZ", "BJ", "BM", "BT", "BO", "BA", "BW", "BV",
    "BR", "IO", "BN", "BG", "BF", "BI", "KH", "CM", "CA", "CV", "KY", "CF", "TD", "CL", "CN",
    "CX", "CC", "CO", "KM", "CG", "CD", "CK", "CR", "CI", "HR", "CU", "CY", "CZ", "DK", "DJ",
    "DM", "DO", "EC", "EG", "SV", "GQ", "ER", "EE", "ET", "FK", "FO", "FJ", "FI", "FR", "GF",
    "PF", "TF", "GA", "GM", "GE", "DE", "GH", "GI", "GR", "GL", "GD", "GP", "GU", "GT", "GG",
    "GN", "GW", "GY", "HT", "HM", "VA", "HN", "HK", "HU", "IS", "IN", "ID", "IR", "IQ", "IE",
    "IM", "IL", "IT", "JM", "JP", "JE", "JO", "KZ", "KE", "KI", "KP", "KR", "XK", "KW", "KG",
    "LA", "LV", "LB", "LS", "LR", "LY", "LI", "LT", "LU", "MO", "MK", "MG", "MW", "MY", "MV",
    "ML", "MT", "MH", "MQ", "MR", "MU", "YT", "MX", "FM", "MD", "MC", "MN", "ME", "MS", "MA",
    "MZ", "MM", "NA", "NR", "NP", "NL", "AN", "NC", "NZ", "NI", "NE", "NG", "NU", "NF", "MP",
    "NO", "OM", "PK", "PW", "PS", "PA", "PG", "PY", "PE", "PH", "PN", "PL", "PT", "PR", "QA",
    "RE", "RO", "RU", "RW", "SH", "KN", "LC", "MF", "PM", "VC", "WS", "SM", "ST", "SA", "SN",
    "RS", "SC", "SL", "SG", "SX", "SK", "SI", "SB", "SO", "ZA", "GS", "ES", "LK", "SD", "SR",
    "SJ", "SZ", "SE", "CH", "SY", "TW", "TJ", "TZ", "TH", "TL", "TG", "TK", "TO", "TT", "TN",
    "TR", "TM", "TC", "TV", "UG", "GB", "UA", "AE", "US", "UM", "UY", "UZ", "VU", "VE", "VN",
    "VG", "VI", "WF", "EH", "YE", "ZM", "ZW",
]
# fmt: on
COUNTRY_CODES: Final[frozenset[str]] = frozenset(Country.__args__)  # type: ignore[attr-defined]

DndStatus: TypeAlias = Literal["active", "inactive", "permanent"]
InboundDndStatus: TypeAlias = Literal["active", "inactive"]

# The API is JavaScript: a JSON integer beyond 2**53 - 1 would be rounded on arrival, silently
# storing another number. Refusing it here keeps the value the caller meant or says why not.
SafeInt: TypeAlias = Annotated[int, msgspec.Meta(ge=-(2**53 - 1), le=2**53 - 1)]


class _Request(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Base of request structs: unknown fields are errors (the API answers them with 422)."""


class DndChannel(_Request):
    """Do-not-disturb state of one channel (``DndSettingSchema``)."""

    status: DndStatus
    message: str | UnsetType = UNSET
    code: str | UnsetType = UNSET


class DndSettings(_Request):
    """Per-channel do-not-disturb settings; the wire names are the API's (``SMS``, ``WhatsApp``)."""

    call: DndChannel | UnsetType = field(default=UNSET, name="Call")
    email: DndChannel | UnsetType = field(default=UNSET, name="Email")
    sms: DndChannel | UnsetType = field(default=UNSET, name="SMS")
    whatsapp: DndChannel | UnsetType = field(default=UNSET, name="WhatsApp")
    gmb: DndChannel | UnsetType = field(default=UNSET, name="GMB")
    fb: DndChannel | UnsetType = field(default=UNSET, name="FB")


class InboundDndChannel(_Request):
    """Inbound do-not-disturb state (``InboundDndSettingSchema``): no ``permanent`` here."""

    status: InboundDndStatus
    message: str | UnsetType = UNSET


class InboundDndSettings(_Request):
    """Inbound do-not-disturb settings; the API has the single channel ``all``."""

    all: InboundDndChannel | UnsetType = UNSET


class UploadedFileMeta(_Request, rename="camel"):
    """``meta`` of an uploaded file in a file custom field (the spec's ``FileField`` example)."""

    fieldname: str | UnsetType = UNSET
    originalname: str | UnsetType = UNSET
    encoding: str | UnsetType = UNSET
    mimetype: str | UnsetType = UNSET
    size: SafeInt | UnsetType = UNSET
    uuid: str | UnsetType = UNSET


class UploadedFile(_Request, rename="camel"):
    """One uploaded file of a file custom field, keyed by its uuid in the field's value."""

    meta: UploadedFileMeta | UnsetType = UNSET
    url: str | UnsetType = UNSET
    document_id: str | UnsetType = UNSET


# Text, large text, single select, radio: str. Numeric, monetary: a number. Checkbox, multi
# select: a list of strings. File: {uuid: UploadedFile}.
CustomFieldValue: TypeAlias = str | SafeInt | float | list[str] | dict[str, UploadedFile]

CustomFieldValueKey: TypeAlias = Literal["field_value", "fieldValue"]


class CustomField(_Request):
    """A custom field value to set. ``id`` is required; ``key`` may accompany it.

    On the wire the value's key is ``field_value`` (the v2 spec); :class:`UpdateContactCodec`
    can send ``fieldValue`` instead (the v3 spelling, which users report works too).
    """

    id: str
    key: str | UnsetType = UNSET
    value: CustomFieldValue | UnsetType = field(default=UNSET, name="field_value")

    def __post_init__(self) -> None:
        # JSON has no NaN or infinity: msgspec would send them as null, which *clears* the
        # field on the server. Refused here (construction and decoding) and again at encoding.
        _check_finite(self.value)


def _check_finite(value: object) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(
            f"a custom field value must be a finite number, not {value!r}"
            " (JSON has no NaN or infinity; it would be sent as null, clearing the field)"
        )


# YYYY/MM/DD, MM/DD/YYYY, YYYY-MM-DD, MM-DD-YYYY, YYYY.MM.DD, MM.DD.YYYY, YYYY_MM_DD,
# MM_DD_YYYY (the spec's description of dateOfBirth). No day-first format exists.
DATE_OF_BIRTH_FORMATS: Final = tuple(
    f"{a}{sep}{b}{sep}{c}"
    for sep in "/-._"
    for a, b, c in (("YYYY", "MM", "DD"), ("MM", "DD", "YYYY"))
)
_YEAR_FIRST = re.compile(r"(\d{4})([/\-._])(\d{2})\2(\d{2})")
_YEAR_LAST = re.compile(r"(\d{2})([/\-._])(\d{2})\2(\d{4})")


def _check_date_of_birth(value: str) -> None:
    if m := _YEAR_FIRST.fullmatch(value):
        year, month, day = m.group(1, 3, 4)
    elif m := _YEAR_LAST.fullmatch(value):
        month, day, year = m.group(1, 3, 4)
    else:
        raise ValueError(
            f"Invalid date {value!r}, expected one of {', '.join(DATE_OF_BIRTH_FORMATS)}"
            " - at `$.dateOfBirth`"
        )
    try:
        _dt.date(int(year), int(month), int(day))
    except ValueError:
        raise ValueError(f"Invalid date {value!r}, not a real date - at `$.dateOfBirth`") from None


class UpdateContact(_Request, rename="camel"):
    """The body of Update Contact (``UpdateContactDto``): every field optional.

    ``UNSET`` (the default) leaves a field unchanged and omits it from the JSON; ``None`` clears it
    and is allowed only where the spec marks the field nullable. ``tags`` replaces the contact's
    whole tag list.
    """

    first_name: str | UnsetType | None = UNSET
    last_name: str | UnsetType | None = UNSET
    name: str | UnsetType | None = UNSET
    email: str | UnsetType | None = UNSET
    phone: str | UnsetType | None = UNSET
    address1: str | UnsetType | None = UNSET
    city: str | UnsetType | None = UNSET
    state: str | UnsetType | None = UNSET
    postal_code: str | UnsetType = UNSET
    website: str | UnsetType | None = UNSET
    timezone: str | UnsetType | None = UNSET
    dnd: bool | UnsetType = UNSET
    dnd_settings: DndSettings | UnsetType = UNSET
    inbound_dnd_settings: InboundDndSettings | UnsetType = UNSET
    tags: list[str] | UnsetType = UNSET
    custom_fields: list[CustomField] | UnsetType = UNSET
    source: str | UnsetType | None = UNSET
    date_of_birth: str | UnsetType | None = UNSET
    country: Country | UnsetType = UNSET
    assigned_to: str | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        # msgspec runs this on decode too, turning ValueError into ValidationError.
        if isinstance(self.date_of_birth, str):
            _check_date_of_birth(self.date_of_birth)


class UpdateContactCodec:
    """Encodes and decodes :class:`UpdateContact` bodies; build once, reuse for every request.

    ``value_key`` is the wire name of a custom field's value: ``"field_value"`` (the v2 spec, the
    default) or ``"fieldValue"`` (the v3 spelling). The default path is msgspec end to end; the
    other renames the key in builtins, paying a little for the choice.
    """

    __slots__ = ("_json_decoder", "_json_encoder", "_update_decoder", "value_key")

    def __init__(self, value_key: CustomFieldValueKey = "field_value") -> None:
        if value_key not in ("field_value", "fieldValue"):
            raise ValueError(f"value_key must be 'field_value' or 'fieldValue', not {value_key!r}")
        self.value_key: CustomFieldValueKey = value_key
        self._json_encoder = msgspec.json.Encoder()
        self._json_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
        self._update_decoder = msgspec.json.Decoder(UpdateContact)

    def encode(self, update: UpdateContact) -> bytes:
        """The JSON body for ``update``.

        Raises ``ValueError`` for a custom field value set to NaN or infinity after the field
        was built (structs are mutable): sent, it would be ``null`` and clear the field.
        """
        if update.custom_fields is not UNSET:
            for item in update.custom_fields:
                _check_finite(item.value)
        if self.value_key == "field_value" or update.custom_fields is UNSET:
            return self._json_encoder.encode(update)
        body = msgspec.to_builtins(update)
        for item in body["customFields"]:
            if "field_value" in item:
                item["fieldValue"] = item.pop("field_value")
        return self._json_encoder.encode(body)

    def decode(self, data: bytes | str) -> UpdateContact:
        """Parse and validate a JSON body; raises ``msgspec.ValidationError`` or ``DecodeError``."""
        if self.value_key == "field_value":
            return self._update_decoder.decode(data)
        return self.convert(self._json_decoder.decode(data))

    def convert(self, obj: Mapping[str, Any]) -> UpdateContact:
        """Validate an already parsed JSON object (a dict) into an :class:`UpdateContact`."""
        if self.value_key == "fieldValue":
            obj = _rename_value_key(obj, "fieldValue", "field_value")
        try:
            return msgspec.convert(obj, UpdateContact)
        except msgspec.ValidationError as exc:
            if self.value_key == "field_value":
                raise
            # Name the key the caller wrote, not the one we renamed it to.
            message = str(exc).replace(".field_value`", ".fieldValue`")
            raise msgspec.ValidationError(message) from None


def _rename_value_key(obj: Mapping[str, Any], old: str, new: str) -> Mapping[str, Any]:
    """Move custom field values from the ``old`` wire key to ``new``; ``new`` given is an error.

    With the ``fieldValue`` setting, ``field_value`` in the input is as unknown as any other
    stray key, and saying so beats sending whichever of the two the server happens to prefer.
    """
    fields = obj.get("customFields")
    if not isinstance(fields, list):
        return obj
    renamed: list[Any] = []
    for i, item in enumerate(fields):
        if not isinstance(item, dict):
            renamed.append(item)  # msgspec.convert names the wrong type
            continue
        if new in item:
            raise msgspec.ValidationError(
                f"Object contains unknown field `{new}` - at `$.customFields[{i}]`"
            )
        renamed.append({(new if k == old else k): v for k, v in item.items()})
    return {**obj, "customFields": renamed}


# ---------------------------------------------------------------------------------------------
# Responses: lenient. Every field optional, nulls accepted, unknown fields ignored.


class _Response(Struct, kw_only=True, omit_defaults=True):
    """Base of response structs: tolerant of what the server adds or leaves out."""


class ContactDndChannel(_Response):
    """A channel's do-not-disturb state as the server reports it."""

    status: str | None = None
    message: str | None = None
    code: str | None = None


class ContactDndSettings(_Response):
    """Do-not-disturb settings as the server reports them."""

    call: ContactDndChannel | None = field(default=None, name="Call")
    email: ContactDndChannel | None = field(default=None, name="Email")
    sms: ContactDndChannel | None = field(default=None, name="SMS")
    whatsapp: ContactDndChannel | None = field(default=None, name="WhatsApp")
    gmb: ContactDndChannel | None = field(default=None, name="GMB")
    fb: ContactDndChannel | None = field(default=None, name="FB")


class ContactCustomField(_Response):
    """A custom field of a returned contact: ``{id, value}``, not ``field_value``."""

    id: str | None = None
    value: Any = None


class AttributionSource(_Response, rename="camel"):
    """Where a contact came from (``AttributionSource``)."""

    url: str | None = None
    campaign: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    campaign_id: str | None = None
    fbclid: str | None = None
    gclid: str | None = None
    msclikid: str | None = None
    dclid: str | None = None
    fbc: str | None = None
    fbp: str | None = None
    fb_event_id: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    medium: str | None = None
    medium_id: str | None = None


class Contact(_Response, rename="camel"):
    """A contact as the API returns it (``GetContectByIdSchema``)."""

    id: str | None = None
    name: str | None = None
    location_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    email_lower_case: str | None = None
    timezone: str | None = None
    company_name: str | None = None
    phone: str | None = None
    dnd: bool | None = None
    dnd_settings: ContactDndSettings | None = None
    type: str | None = None
    source: str | None = None
    assigned_to: str | None = None
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    postal_code: str | None = None
    website: str | None = None
    tags: list[str] | None = None
    date_of_birth: str | None = None
    date_added: str | None = None
    date_updated: str | None = None
    attachments: str | None = None
    ssn: str | None = None
    keyword: str | None = None
    first_name_lower_case: str | None = None
    full_name_lower_case: str | None = None
    last_name_lower_case: str | None = None
    last_activity: str | None = None
    custom_fields: list[ContactCustomField] | None = None
    business_id: str | None = None
    attribution_source: AttributionSource | None = None
    last_attribution_source: AttributionSource | None = None
    visitor_id: str | None = None


class UpdateContactResponse(_Response):
    """The 200 body: ``{"succeded": true, "contact": {...}}``.

    The API spells it ``succeded``; ``succeeded`` is accepted too, and both attributes hold the
    same value after decoding.
    """

    succeded: bool | None = None
    succeeded: bool | None = None
    contact: Contact | None = None

    def __post_init__(self) -> None:
        if self.succeded is None:
            self.succeded = self.succeeded
        elif self.succeeded is None:
            self.succeeded = self.succeded


class ErrorBody(_Response, rename="camel"):
    """An error body: ``statusCode``, ``message`` (a string, or a list for 422), ``error``."""

    status_code: int | float | None = None
    message: str | list[str] | None = None
    error: str | None = None
    trace_id: str | None = None

    @property
    def messages(self) -> list[str]:
        """The message(s) as a list: a 422 lists one per problem, others have one."""
        if self.message is None:
            return []
        if isinstance(self.message, str):
            return [self.message]
        return list(self.message)


_default_codec: Final = UpdateContactCodec()
_response_decoder: Final = msgspec.json.Decoder(UpdateContactResponse)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)


def encode_update(update: UpdateContact) -> bytes:
    """The JSON body for ``update``, custom field values under ``field_value``."""
    return _default_codec.encode(update)


def decode_update(data: bytes | str) -> UpdateContact:
    """Parse and validate an Update Contact body (custom field values under ``field_value``)."""
    return _default_codec.decode(data)


def decode_response(data: bytes) -> UpdateContactResponse:
    """Decode a 200 body; raises ``msgspec.DecodeError`` (a ``ValidationError`` for bad shapes)."""
    return _response_decoder.decode(data)


def decode_error_body(data: bytes) -> ErrorBody | None:
    """Decode an error body, or ``None`` when it is not the API's JSON shape (an HTML page)."""
    try:
        return _error_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):  # nested too deep is unreadable too
        return None
