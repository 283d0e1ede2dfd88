"""Test-side builders for ACS media frames (docs/acs-protocol.md#media-streaming-websocket), written from the spec,
not from the streamer."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import numpy as np


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def metadata(rate: int = 16000, length: int | None = None, subscription_id: str = "sub-1") -> str:
    return json.dumps({"kind": "AudioMetadata", "audioMetadata": {
        "subscriptionId": subscription_id, "encoding": "PCM", "sampleRate": rate, "channels": 1,
        "length": length if length is not None else rate // 50 * 2}})


def audio(pcm: bytes, t: datetime, participant: str | None = "8:acs:p1", silent: bool = False) -> str:
    ad: dict[str, object] = {"timestamp": iso(t), "data": base64.b64encode(pcm).decode(), "silent": silent}
    if participant is not None:
        ad["participantRawID"] = participant
    return json.dumps({"kind": "AudioData", "audioData": ad})


def tone_pcm(n_frames: int, rate: int = 16000, seed: int = 0) -> list[bytes]:
    """n 20-ms frames of distinct, non-silent PCM (random noise: every frame differs, so misplacement shows)."""
    rng = np.random.default_rng(seed)
    samples = rate // 50
    return [rng.integers(-8000, 8000, samples, dtype=np.int16).tobytes() for _ in range(n_frames)]


def _now_start() -> datetime:
    """A whole second a moment ago: the streamer checks first timestamps against its receive clock."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)


START = _now_start()  # reset before every test (tests/conftest.py), so a long session never makes it stale


def reset_start() -> None:
    global START
    START = _now_start()


def at(i: int, start: datetime | None = None, ms: float = 20.0) -> datetime:
    return (start or START) + timedelta(milliseconds=ms * i)
