"""The media-streaming transport URL: the address contract between the planes.

The function app gives ACS `STREAMER_WSS_URL` (which ends in `/ws`) + `/mixed` or `/unmixed` as the transport URL;
ACS sends no channel type on the socket, so the streamer takes every WebSocket at `/ws` or under `/ws/` as media
and reads the channel type back from the path (or an `audioChannel` query parameter). Both sides use this module.
"""

from __future__ import annotations

from urllib.parse import parse_qs

MEDIA_PATH = "/ws"
CHANNELS = ("mixed", "unmixed")
NO_HINT = "auto"  # the streamer then splits by participant when frames name one


def transport_url(streamer_wss_url: str, channel: str) -> str:
    """What the function app hands ACS: wss://host/ws/mixed or wss://host/ws/unmixed."""
    if channel not in CHANNELS:
        raise ValueError(f"audio channel {channel!r} is not one of {CHANNELS}")
    return f"{streamer_wss_url.rstrip('/')}/{channel}"


def is_media_path(path: str) -> bool:
    """`/ws` and anything under `/ws/` is a media socket (not `/wsx`)."""
    return path == MEDIA_PATH or path.startswith(MEDIA_PATH + "/")


def channel_hint(path: str, query_string: bytes = b"") -> str:
    """The channel type a media socket's path (last segment) or `?audioChannel=` names, else `auto`."""
    last = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if last in CHANNELS:
        return last
    qs = parse_qs(query_string.decode("latin-1"))
    hint = (qs.get("audioChannel") or [""])[0].lower()
    return hint if hint in CHANNELS else NO_HINT
