"""Simulator settings (`SimulatorConfig`) and per-call scripts (`CallScript`): what the fake ACS does on a call.

A call's media *format* (16/24 kHz, mixed/unmixed, DTMF on/off, start now or later) comes from the
mediaStreamingOptions the app sends, as with real ACS. What the far end *does* — how long the call lasts, who
speaks, with which audio, which faults hit the stream — is the script: `SimulatorConfig.default_script`, replaced
per target (`POST /sim/scripts`) or per incoming call (`POST /sim/incoming-calls`).
"""

from __future__ import annotations

import base64
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from common.acs_jwt import DEFAULT_ISSUER
from devstack.simulator.audio import AudioSpec
from devstack.simulator.media import Faults

DEFAULT_API_VERSION = "2026-03-12"
KNOWN_API_VERSIONS = ("2023-03-06", "2023-10-15", "2024-04-15", "2024-09-15", "2025-05-15", "2025-06-15",
                      "2026-03-12")
# A fixed default "immutable resource id" (the JWT audience) so a CLI-started simulator and the app agree.
DEFAULT_RESOURCE_ID = "7c1e5f52-9d3b-4e4a-8f0e-3a6b2d9c4e10"


def random_access_key() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


@dataclass(frozen=True)
class CallScript:
    """What happens on one simulated call after it is created/answered.

    duration_s: scripted call length; when the call clock reaches it the far end hangs up (MediaStreamingStopped,
        CallDisconnected). None: the call lasts until hung up (audio loops).
    speakers: how many participants talk (unmixed: one stream each, max 4). The first are the real parties
        (targets of an outbound call / the caller of an incoming one); the rest get generated ACS user ids.
    participants: explicit participantRawIDs instead (overrides `speakers`).
    mixed_participant: "omit" (no participantRawID on mixed frames) or "first" (the first participant's id).
    connect_delay_s: time from create/answer to CallConnected (the callee "picks up").
    outcome: "connect", or "fail" → CreateCallFailed / AnswerFailed instead of CallConnected.
    dtmf: (call-clock seconds, digit) tones sent as DtmfData when the call enabled DTMF.
    dtmf_full: DtmfData also carries timestamp and participantRawID (.NET reads them; the docs show only data).
    pace: per-call override of the simulator's pace.
    """

    duration_s: float | None = 20.0
    speakers: int = 2
    participants: tuple[str, ...] = ()
    audio: AudioSpec = field(default_factory=AudioSpec)
    mixed_participant: str = "omit"
    connect_delay_s: float = 0.2
    outcome: str = "connect"
    dtmf: tuple[tuple[float, str], ...] = ()
    dtmf_full: bool = False
    faults: Faults = field(default_factory=Faults)
    pace: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.speakers <= 4 and not self.participants:
            raise ValueError("speakers must be 1..4 (ACS streams at most 4 unmixed channels)")
        if len(self.participants) > 4:
            raise ValueError("at most 4 participants")
        if self.mixed_participant not in ("omit", "first"):
            raise ValueError("mixed_participant is 'omit' or 'first'")
        if self.outcome not in ("connect", "fail"):
            raise ValueError("outcome is 'connect' or 'fail'")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration_s must be positive")
        for _, digit in self.dtmf:
            if digit not in "0123456789*#ABCD":
                raise ValueError(f"not a DTMF digit: {digit!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["participants"] = list(self.participants)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: CallScript | None = None) -> CallScript:
        """Build from JSON (snake_case or camelCase keys); unspecified fields keep `base`'s values."""
        base = base or cls()
        data = {_snake(k): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown script fields: {sorted(unknown)}")
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key == "audio":
                audio = {_snake(k): v for k, v in (value or {}).items()}
                for seq in ("wav_paths", "texts"):
                    if seq in audio:
                        audio[seq] = tuple(audio[seq])
                changes[key] = replace(base.audio, **audio)
            elif key == "faults":
                faults = {_snake(k): v for k, v in (value or {}).items()}
                if "gaps" in faults:
                    faults["gaps"] = tuple(tuple(g) for g in faults["gaps"])
                changes[key] = replace(base.faults, **faults)
            elif key == "dtmf":
                changes[key] = tuple((float(t), str(d)) for t, d in value)
            elif key == "participants":
                changes[key] = tuple(value)
            else:
                changes[key] = value
        return replace(base, **changes)


def _snake(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class SimulatorConfig:
    """Everything the simulator needs. Defaults give a working, verifying, real-time simulator.

    access_key: base64 HMAC key (the SDK base64-decodes it), checked on every REST call unless verify_hmac=False.
    max_clock_skew_s: requests whose x-ms-date is further than this from now get 401 (replay protection).
    issuer / audience: the `iss` / `aud` of the JWTs on callbacks and WebSocket upgrades (audience = the ACS
        immutable resource id). The key pair is the simulator's own; its JWKS is served at /calling/keys.
    pace: 1.0 real time (20 ms per frame), N → N times faster, 0 → unthrottled.
    loopback_only: refuse callback / Event Grid / transport URLs that are not loopback (never call out).
    ring_timeout_s: an incoming call not answered within this is abandoned (its context no longer answerable).
    capture_requests: how many REST requests to keep (method, raw path, headers, body) for tests.
    """

    access_key: str = field(default_factory=random_access_key)
    verify_hmac: bool = True
    max_clock_skew_s: float = 900.0
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_RESOURCE_ID
    pace: float = 1.0
    default_script: CallScript = field(default_factory=CallScript)
    loopback_only: bool = True
    callback_timeout_s: float = 10.0
    ws_open_timeout_s: float = 5.0
    ring_timeout_s: float = 60.0
    capture_requests: int = 500
    event_grid_topic: str = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
                             "Microsoft.Communication/communicationServices/acs-simulator")
    event_grid_subscription: str = "INCOMINGCALL"
    public_url: str | None = None  # for the OpenID configuration document; set by SimulatorServer

    def __post_init__(self) -> None:
        try:
            base64.b64decode(self.access_key, validate=True)
        except ValueError as exc:
            raise ValueError("access_key must be base64 (the SDK base64-decodes it)") from exc
        if self.pace < 0:
            raise ValueError("pace must be >= 0")

    @property
    def secret(self) -> bytes:
        return base64.b64decode(self.access_key)
