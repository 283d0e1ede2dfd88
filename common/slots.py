"""Slot occupancy of a chunk: which frame slots hold received audio, and the first-write-wins merge of two parts.
The streamer writes it with every chunk; the finalizer reads it to count received audio and find first frames.

Silence and "no frame" are both zeros in PCM, so a chunk's blob metadata carries its occupancy (`slots`: packed
bits, base64) and the size of a slot (`slotbytes`); a later part of the same chunk may fill only empty slots.
"""

from __future__ import annotations

import base64

import numpy as np


def occupancy(mask: bytes | np.ndarray) -> str:
    """A chunk's occupied slots (1 = a frame was received there, silent or not) for its blob metadata."""
    bits = np.frombuffer(mask, dtype=np.uint8) if isinstance(mask, bytes) else mask.astype(np.uint8)
    return base64.b64encode(np.packbits(bits != 0).tobytes()).decode("ascii")


def read_occupancy(meta: dict[str, str], pcm_bytes: int, frame_bytes: int) -> np.ndarray:
    """Occupied slots of a stored chunk. A chunk written before occupancy was recorded counts as occupied up to
    its length: silence and "no frame" are both zeros there, so none of it may be replaced."""
    slots = -(-pcm_bytes // frame_bytes)
    raw = meta.get("slots")
    if raw is None:
        return np.ones(slots, dtype=bool)
    # validate: a lenient decode reads a damaged map as "nothing stored", and stored audio would then be replaced
    bits = np.unpackbits(np.frombuffer(base64.b64decode(raw, validate=True), dtype=np.uint8)).astype(bool)
    if len(bits) < slots:
        raise ValueError(f"slot map covers {len(bits)} of the chunk's {slots} frame slots")
    out = np.zeros(max(slots, len(bits)), dtype=bool)
    out[: len(bits)] = bits
    return out


def fill_empty(cur_pcm: bytes, cur_occ: np.ndarray, new_pcm: bytes | memoryview, new_occ: np.ndarray, frame_bytes: int
               ) -> tuple[bytes, np.ndarray, int, int]:
    """Stored chunk audio with the frames of a new part added where the stored chunk has none.

    -> (pcm, occupancy, slots filled, conflicting slots). Slots occupied in both keep the stored audio; they are
    conflicts when the new part's audio there differs (an identical replay of a write is not a conflict). Two
    honest writers of one chunk (an early seal and a late resume, or the end of one streaming session and the start
    of the next) own disjoint slots, so the result is their union."""
    size = max(len(cur_pcm), len(new_pcm))
    slots = -(-size // frame_bytes)
    out = np.zeros(slots * frame_bytes, dtype=np.uint8)
    out[: len(cur_pcm)] = np.frombuffer(cur_pcm, dtype=np.uint8)
    new = np.zeros(slots * frame_bytes, dtype=np.uint8)
    new[: len(new_pcm)] = np.frombuffer(new_pcm, dtype=np.uint8)
    width = max(slots, len(cur_occ), len(new_occ))
    have = np.zeros(width, dtype=bool)
    have[: len(cur_occ)] = cur_occ
    # A slot with stored sound is held whatever the map says: an honest empty slot is zeros, so a map that calls
    # it empty is wrong (edited by hand), and stored audio must not be replaced on its word.
    have[:slots] |= out.reshape(slots, frame_bytes).any(axis=1)  # `out` is the stored audio, zero-padded
    take = np.zeros(width, dtype=bool)
    take[: len(new_occ)] = new_occ
    take[slots:] = False  # a mask longer than the part's audio names no audio
    fill = take & ~have
    both = take[:slots] & have[:slots]
    out2, new2 = out.reshape(slots, frame_bytes), new.reshape(slots, frame_bytes)
    conflicts = int((out2[both] != new2[both]).any(axis=1).sum()) if both.any() else 0
    out2[fill[:slots]] = new2[fill[:slots]]
    end = max(len(cur_pcm), (int(np.flatnonzero(fill).max()) + 1) * frame_bytes if fill.any() else 0)
    return out[: min(end, size)].tobytes(), have | fill, int(fill.sum()), conflicts
