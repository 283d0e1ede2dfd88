"""CommunicationIdentifierModel as the service returns it: always `rawId` and `kind` (docs/acs-protocol.md#identifiers).

The SDK sends identifiers without `kind` (`{"rawId": "4:+1555…", "phoneNumber": {"value": "+1555…"}}`); the
service's responses and events carry both, and the SDK's deserializer needs `rawId`.
"""

from __future__ import annotations

import uuid
from typing import Any

_KINDS = ("communicationUser", "phoneNumber", "microsoftTeamsUser", "microsoftTeamsApp", "teamsExtensionUser")


class IdentifierError(ValueError):
    pass


def from_raw_id(raw_id: str) -> dict[str, Any]:
    """An identifier model from a raw id (`4:+E164`, `8:acs:…`, `8:orgid:…`, `28:orgid:…`) or a bare `+E164`."""
    if raw_id.startswith("+"):
        raw_id = "4:" + raw_id
    if raw_id.startswith("4:"):
        number = raw_id[2:]
        return {"kind": "phoneNumber", "rawId": raw_id, "phoneNumber": {"value": number}}
    if raw_id.startswith(("8:acs:", "8:spool:", "8:dod-acs:", "8:gcch-acs:")):
        return {"kind": "communicationUser", "rawId": raw_id, "communicationUser": {"id": raw_id}}
    if raw_id.startswith("8:orgid:"):
        return {"kind": "microsoftTeamsUser", "rawId": raw_id,
                "microsoftTeamsUser": {"userId": raw_id[len("8:orgid:"):], "isAnonymous": False,
                                       "cloud": "public"}}
    if raw_id.startswith("28:orgid:"):
        return {"kind": "microsoftTeamsApp", "rawId": raw_id,
                "microsoftTeamsApp": {"appId": raw_id[len("28:orgid:"):], "cloud": "public"}}
    return {"kind": "unknown", "rawId": raw_id}


def normalize(model: Any) -> dict[str, Any]:
    """A request identifier (as the SDK sends it) → the response shape with `kind` and `rawId`."""
    if isinstance(model, str):
        return from_raw_id(model)
    if not isinstance(model, dict):
        raise IdentifierError("identifier must be an object")
    raw_id = model.get("rawId")
    if "phoneNumber" in model and isinstance(model["phoneNumber"], dict):
        number = model["phoneNumber"].get("value")
        if not isinstance(number, str) or not number.startswith("+"):
            raise IdentifierError("phoneNumber.value must be an E.164 number")
        return {"kind": "phoneNumber", "rawId": raw_id or "4:" + number, "phoneNumber": {"value": number}}
    if "communicationUser" in model and isinstance(model["communicationUser"], dict):
        uid = model["communicationUser"].get("id")
        if not isinstance(uid, str) or not uid:
            raise IdentifierError("communicationUser.id is required")
        return {"kind": "communicationUser", "rawId": raw_id or uid, "communicationUser": {"id": uid}}
    for kind in _KINDS[2:]:
        if kind in model:
            if not raw_id:
                raise IdentifierError(f"{kind} identifier needs rawId")
            return {"kind": kind, "rawId": raw_id, kind: model[kind]}
    if isinstance(raw_id, str) and raw_id:
        return from_raw_id(raw_id)
    raise IdentifierError("identifier has neither rawId nor a known kind")


def phone_model(number_or_model: Any) -> dict[str, Any]:
    """PhoneNumberIdentifierModel (`{"value": "+1…"}`) — what sourceCallerIdNumber / answeredFor use."""
    if isinstance(number_or_model, dict):
        value = number_or_model.get("value")
    else:
        value = str(number_or_model)
        if value.startswith("4:"):
            value = value[2:]
    if not isinstance(value, str) or not value.startswith("+"):
        raise IdentifierError("phone number must be E.164 (+…)")
    return {"value": value}


def new_acs_user(resource_id: str) -> str:
    """A raw id shaped like an ACS user: `8:acs:{resourceId}_{guid}` (extra speakers on a simulated call)."""
    return f"8:acs:{resource_id}_{uuid.uuid4()}"
