"""The sandbox's contact store: contacts in the API's JSON shape, updated as the API merges.

Merge rules of Update Contact, as documented and observed:

- a field not sent stays as it was; ``null`` clears it (the key disappears from the contact,
  since ``GetContectByIdSchema`` declares no nullable field);
- ``tags`` replaces the whole list;
- ``customFields`` sets the value of each listed field id; others stay; the contact lists them as
  ``{id, value}``;
- ``dndSettings`` replaces the listed channels; others stay (likewise ``inboundDndSettings``);
- ``dateOfBirth`` is stored as ``YYYY-MM-DD``, whatever supported format it came in;
- the lower-case helpers (``firstNameLowerCase``, ``lastNameLowerCase``, ``fullNameLowerCase``,
  ``emailLowerCase``) and ``name`` follow the fields they derive from, and ``dateUpdated`` is set.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any, Final

from growthhub_async.models import _YEAR_FIRST

__all__ = ["apply_update", "iso_date_of_birth", "new_contact", "timestamp"]

_PLAIN: Final = frozenset(
    {
        "firstName",
        "lastName",
        "email",
        "phone",
        "address1",
        "city",
        "state",
        "postalCode",
        "website",
        "timezone",
        "dnd",
        "source",
        "country",
        "assignedTo",
    }
)


def timestamp() -> str:
    """Now, as the API writes ``dateAdded`` and ``dateUpdated`` (UTC, milliseconds, ``Z``)."""
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def iso_date_of_birth(value: str) -> str:
    """A validated ``dateOfBirth`` in any supported format, as ``YYYY-MM-DD``."""
    if _YEAR_FIRST.fullmatch(value):
        return f"{value[0:4]}-{value[5:7]}-{value[8:10]}"
    return f"{value[6:10]}-{value[0:2]}-{value[3:5]}"


def new_contact(
    contact_id: str, location_id: str, seed: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A contact as first stored: the seed's fields (if any), plus ``id`` and ``locationId``."""
    contact: dict[str, Any] = dict(seed) if seed else {}
    contact["id"] = contact_id
    contact.setdefault("locationId", location_id)
    contact.setdefault("type", "lead")
    contact.setdefault("dateAdded", timestamp())
    _derive(contact, name_sent=True)
    return contact


def _set(contact: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        contact.pop(key, None)
    else:
        contact[key] = value


def _derive(contact: dict[str, Any], *, name_sent: bool) -> None:
    first = contact.get("firstName")
    last = contact.get("lastName")
    if not name_sent:
        full = " ".join(part for part in (first, last) if part)
        _set(contact, "name", full or None)
    _set(contact, "firstNameLowerCase", first.lower() if first else None)
    _set(contact, "lastNameLowerCase", last.lower() if last else None)
    name = contact.get("name")
    _set(contact, "fullNameLowerCase", name.lower() if name else None)
    email = contact.get("email")
    _set(contact, "emailLowerCase", email.lower() if email else None)


def apply_update(contact: dict[str, Any], body: Mapping[str, Any]) -> None:
    """Merge a validated Update Contact body into ``contact`` in place."""
    for key, value in body.items():
        if key in _PLAIN:
            _set(contact, key, value)
        elif key == "name":
            _set(contact, "name", value)
        elif key == "tags":
            contact["tags"] = list(value)
        elif key == "dateOfBirth":
            _set(contact, key, None if value is None else iso_date_of_birth(value))
        elif key in ("dndSettings", "inboundDndSettings"):
            merged = dict(contact.get(key) or {})
            merged.update(value)
            contact[key] = merged
        elif key == "customFields":
            _merge_custom_fields(contact, value)
    names_sent = "firstName" in body or "lastName" in body or "name" in body
    if names_sent or "email" in body:
        _derive(contact, name_sent="name" in body or not names_sent)
    contact["dateUpdated"] = timestamp()


def _merge_custom_fields(contact: dict[str, Any], fields: list[dict[str, Any]]) -> None:
    current = {item["id"]: item for item in contact.get("customFields") or () if "id" in item}
    for item in fields:
        value = item.get("field_value", item.get("fieldValue"))
        if value is None:
            continue
        current[item["id"]] = {"id": item["id"], "value": value}
    contact["customFields"] = list(current.values())
