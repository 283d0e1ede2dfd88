"""The media-streaming transport URL, the contract between the planes: the function app appends the audio channel
it asked ACS for (`{STREAMER_WSS_URL}/mixed` or `/unmixed`), and the streamer reads it back from the path, since
the first messages do not say whether audio is mixed. `?audioChannel=` is accepted too."""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs

MEDIA_PATH = "/ws"
CHANNELS = ("mixed", "unmixed")
ChannelHint = Literal["mixed", "unmixed", "auto"]


def transport_url(base: str, channel: str) -> str:
    """The URL ACS is told to stream `channel` audio to."""
    if channel not in CHANNELS:
        raise ValueError(f"audio channel must be one of {CHANNELS}, got {channel!r}")
    return f"{base.rstrip('/')}/{channel}"


def is_media_path(path: str) -> bool:
    return path == MEDIA_PATH or path.startswith(MEDIA_PATH + "/")


def channel_hint(path: str, query_string: bytes = b"") -> ChannelHint:
    """`/ws/mixed`, `/ws/unmixed` or `?audioChannel=…`; `auto` when neither says."""
    last = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if last == "mixed" or last == "unmixed":
        return last  # type: ignore[return-value]
    hint = (parse_qs(query_string.decode("latin-1")).get("audioChannel") or [""])[0].lower()
    return hint if hint in CHANNELS else "auto"  # type: ignore[return-value]
