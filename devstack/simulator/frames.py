"""ACS media-streaming frames (docs/acs-protocol.md#media-streaming-websocket) built as JSON text, cheaply.

The benchmark drives hundreds of concurrent streams with these, so everything that does not change per frame is
done once: PCM is cut into 20 ms frames, base64-encoded and silence-flagged when an `EncodedTrack` is built, and the
participant's JSON fragment is escaped once. Per frame only the timestamp and a string join remain.

Shapes (camelCase, capital `ID` in `participantRawID`, text frames):
    {"kind":"AudioMetadata","audioMetadata":{"subscriptionId":..,"encoding":"PCM","sampleRate":16000,
                                             "channels":1,"length":640}}
    {"kind":"AudioData","audioData":{"timestamp":"2024-11-15T19:16:12.925Z","participantRawID":"8:acs:..",
                                     "data":"<base64 s16le>","silent":false}}
    {"kind":"DtmfData","dtmfData":{"data":"3"}}
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FRAME_MS = 20
FRAMES_PER_SECOND = 1000 // FRAME_MS
SUPPORTED_RATES = (16000, 24000)
SAMPLE_BYTES = 2  # s16le mono


def samples_per_frame(sample_rate: int) -> int:
    return sample_rate * FRAME_MS // 1000


def frame_bytes(sample_rate: int) -> int:
    """640 at 16 kHz, 960 at 24 kHz: what AudioMetadata.length announces and every AudioData carries."""
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(f"ACS streams 16000 or 24000 Hz, not {sample_rate}")
    return samples_per_frame(sample_rate) * SAMPLE_BYTES


_second_cache: tuple[int, str] = (-1, "")


def format_timestamp(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, as ACS writes it. Caches the per-second prefix (50 calls/second)."""
    global _second_cache
    sec, ms = divmod(epoch_ms, 1000)
    cached_sec, prefix = _second_cache
    if cached_sec != sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second_cache = (sec, prefix)
    return f"{prefix}.{ms:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def audio_metadata(subscription_id: str, sample_rate: int, channels: int = 1) -> str:
    return json.dumps({"kind": "AudioMetadata", "audioMetadata": {
        "subscriptionId": subscription_id, "encoding": "PCM", "sampleRate": sample_rate,
        "channels": channels, "length": frame_bytes(sample_rate)}}, separators=(",", ":"))


def participant_fragment(participant_raw_id: str | None) -> str:
    """The `"participantRawID":"…",` piece of an AudioData frame, escaped once; empty when the field is omitted."""
    if participant_raw_id is None:
        return ""
    return '"participantRawID":' + json.dumps(participant_raw_id) + ","


def audio_data(timestamp: str, data_b64: str, silent: bool, participant: str = "") -> str:
    """One AudioData frame. `participant` is a `participant_fragment(...)` (pre-escaped), not a raw id."""
    return ('{"kind":"AudioData","audioData":{"timestamp":"' + timestamp + '",' + participant
            + '"data":"' + data_b64 + '","silent":' + ("true" if silent else "false") + "}}")


def dtmf_data(digit: str, timestamp: str | None = None, participant_raw_id: str | None = None) -> str:
    """DtmfData. The docs show only `data`; .NET also reads `timestamp` and `participantRawID` (added when given)."""
    body: dict[str, str] = {"data": digit}
    if timestamp is not None:
        body["timestamp"] = timestamp
    if participant_raw_id is not None:
        body["participantRawID"] = participant_raw_id
    return json.dumps({"kind": "DtmfData", "dtmfData": body}, separators=(",", ":"))


@dataclass(frozen=True)
class EncodedTrack:
    """One participant's (or the mix's) audio, pre-cut into 20 ms frames and pre-encoded for sending.

    `pcm` holds exactly what is sent (silent frames already zeroed), so a receiver's bytes can be compared with it.
    `participant_raw_id` None means the frames carry no participantRawID (a mixed stream that omits it).
    """

    sample_rate: int
    participant_raw_id: str | None
    pcm: bytes
    b64: tuple[str, ...]
    silent: tuple[bool, ...]
    participant_json: str = field(default="")

    @property
    def frame_bytes(self) -> int:
        return frame_bytes(self.sample_rate)

    def __len__(self) -> int:
        return len(self.b64)

    def frame_pcm(self, index: int) -> bytes:
        fb = self.frame_bytes
        return self.pcm[index * fb:(index + 1) * fb]

    @classmethod
    def from_samples(cls, samples: np.ndarray | bytes, sample_rate: int, participant_raw_id: str | None,
                     silence_threshold: int = 0) -> EncodedTrack:
        """Cut s16 samples into frames (zero-padding the last), flag frames whose peak is <= threshold as silent
        and zero them: ACS marks silence with `silent` and we send zeros then, so `silent` and data agree."""
        spf = samples_per_frame(sample_rate)
        frame_bytes(sample_rate)  # validates the rate
        arr = np.frombuffer(samples, dtype="<i2") if isinstance(samples, bytes | bytearray) else samples
        arr = np.asarray(arr, dtype="<i2")
        n = max(1, -(-len(arr) // spf))
        frames = np.zeros((n, spf), dtype="<i2")
        frames.reshape(-1)[: len(arr)] = arr
        peak = np.abs(frames.astype(np.int32)).max(axis=1)
        silent = peak <= silence_threshold
        frames[silent] = 0
        raw = frames.tobytes()
        fb = spf * SAMPLE_BYTES
        b64 = tuple(base64.b64encode(raw[i * fb:(i + 1) * fb]).decode("ascii") for i in range(n))
        return cls(sample_rate=sample_rate, participant_raw_id=participant_raw_id, pcm=raw, b64=b64,
                   silent=tuple(bool(s) for s in silent), participant_json=participant_fragment(participant_raw_id))


def mix_tracks(tracks: Sequence[np.ndarray]) -> np.ndarray:
    """The mixed stream: sum of the participants' s16 audio, clipped (ACS mixes all speakers into one channel)."""
    if not tracks:
        raise ValueError("nothing to mix")
    n = max(len(t) for t in tracks)
    acc = np.zeros(n, dtype=np.int32)
    for t in tracks:
        acc[: len(t)] += t.astype(np.int32)
    return np.clip(acc, -32768, 32767).astype("<i2")
