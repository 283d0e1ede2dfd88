"""Waveform peaks: the envelope the recordings page draws, computed once when a chunk is stored.

The streamer puts a chunk's peaks in its blob metadata (`peaks`, beside the slot occupancy), so drawing a call of
any length costs one blob listing rather than a download of its audio. One byte per 1/POINTS_PER_SECOND s of the
chunk, from the chunk's start:

    0 … FULL_SCALE   the largest |sample| of that span, scaled to FULL_SCALE and rounded up (any sound is ≥ 1;
                     0 is received digital silence)
    NO_AUDIO         no frame was received anywhere in that span: silence the recorder filled in

Encoded as base64 (metadata values are ASCII): 100 bytes, 136 characters, for a 10-second chunk.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

POINTS_PER_SECOND = 10
FULL_SCALE = 254
NO_AUDIO = 255
META_KEY = "peaks"


def levels(pcm: bytes | memoryview, occupied: np.ndarray, frame_bytes: int, sample_rate: int) -> np.ndarray:
    """The peak levels (uint8, see the module docstring) of one chunk's 16-bit mono PCM, whose frame slot k
    (`frame_bytes` each) holds received audio where `occupied[k]`."""
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)
    per_point = max(1, sample_rate // POINTS_PER_SECOND)
    points = -(-len(samples) // per_point)
    if points == 0:
        return np.zeros(0, dtype=np.uint8)
    mag = np.zeros(points * per_point, dtype=np.int32)
    np.abs(samples, out=mag[: len(samples)], dtype=np.int32)
    peak = mag.reshape(points, per_point).max(axis=1)
    out = np.minimum(FULL_SCALE, -(-peak * FULL_SCALE // 32768)).astype(np.uint8)
    slot_samples = max(1, frame_bytes // 2)
    received = np.zeros(points * per_point, dtype=bool)
    per_sample = np.repeat(np.asarray(occupied, dtype=bool), slot_samples)[: len(received)]
    received[: len(per_sample)] = per_sample
    out[~received.reshape(points, per_point).any(axis=1)] = NO_AUDIO
    return np.asarray(out, dtype=np.uint8)


def encode(values: np.ndarray) -> str:
    return base64.b64encode(values.astype(np.uint8).tobytes()).decode("ascii")


def decode(meta: dict[str, str]) -> np.ndarray | None:
    """A stored chunk's peak levels from its metadata; None when it has none (stored before peaks were kept) or
    they are unreadable."""
    raw = meta.get(META_KEY)
    if not raw:
        return None
    try:
        return np.frombuffer(base64.b64decode(raw, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError):
        return None


def downsample(values: np.ndarray, known: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `factor` points as one: the loudest received level among them, NO_AUDIO when none of them holds
    received audio; a point is known when any of its inputs is."""
    if factor <= 1 or len(values) == 0:
        return values, known
    n = -(-len(values) // factor)
    v = np.full(n * factor, NO_AUDIO, dtype=np.uint8)
    v[: len(values)] = values
    k = np.zeros(n * factor, dtype=bool)
    k[: len(known)] = known
    heard = np.where((v != NO_AUDIO) & k, v, 0).astype(np.int16).reshape(n, factor)
    any_heard = ((v != NO_AUDIO) & k).reshape(n, factor).any(axis=1)
    out = np.where(any_heard, heard.max(axis=1), NO_AUDIO).astype(np.uint8)
    return out, np.asarray(k.reshape(n, factor).any(axis=1), dtype=bool)
