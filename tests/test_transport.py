"""The transport-URL contract between the planes: what the function app builds, the streamer reads back."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from common.transport import CHANNELS, NO_HINT, channel_hint, is_media_path, transport_url


@pytest.mark.parametrize("base", ["wss://rec.example/ws", "wss://rec.example/ws/", "ws://127.0.0.1:8080/ws"])
@pytest.mark.parametrize("channel", CHANNELS)
def test_what_the_function_app_builds_the_streamer_reads_back(base: str, channel: str) -> None:
    url = transport_url(base, channel)
    assert url == f"{base.rstrip('/')}/{channel}"
    parts = urlsplit(url)
    assert is_media_path(parts.path)
    assert channel_hint(parts.path, parts.query.encode()) == channel


def test_an_unknown_channel_is_never_built() -> None:
    with pytest.raises(ValueError):
        transport_url("wss://rec.example/ws", "stereo")


@pytest.mark.parametrize(("path", "query", "hint"), [
    ("/ws", b"", NO_HINT),
    ("/ws/", b"", NO_HINT),
    ("/ws/MIXED/", b"", "mixed"),
    ("/ws/other", b"audioChannel=unmixed", "unmixed"),
    ("/ws", b"audioChannel=Mixed&x=1", "mixed"),
    ("/ws", b"audioChannel=stereo", NO_HINT),
    ("/ws/unmixed", b"audioChannel=mixed", "unmixed"),  # the path wins
])
def test_channel_hint(path: str, query: bytes, hint: str) -> None:
    assert channel_hint(path, query) == hint


@pytest.mark.parametrize(("path", "media"), [
    ("/ws", True), ("/ws/", True), ("/ws/mixed", True), ("/ws/a/b", True),
    ("/wsx", False), ("/", False), ("/healthz", False), ("/api/ws", False),
])
def test_media_paths(path: str, media: bool) -> None:
    assert is_media_path(path) is media
