"""RIFF/WAVE for 16-bit little-endian mono PCM: chunk encoding, and the first-write-wins merge of a chunk."""

from __future__ import annotations

import struct

import numpy as np

HEADER_BYTES = 44


def header(pcm_bytes: int, sample_rate: int, channels: int = 1) -> bytes:
    block_align = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + pcm_bytes, b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16,
        b"data", pcm_bytes,
    )


def encode(pcm: bytes | memoryview, sample_rate: int) -> bytes:
    """One copy: header + PCM."""
    return b"".join((header(len(pcm), sample_rate), pcm))


def info(wav: bytes) -> tuple[int, int]:
    """-> (sample_rate, PCM bytes) from the header of a canonical 44-byte-header mono s16 WAV (what `encode` writes)."""
    if len(wav) < HEADER_BYTES or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", wav, 20)
    if fmt != 1 or channels != 1 or bits != 16 or wav[36:40] != b"data":
        raise ValueError("not 16-bit mono PCM with a canonical header")
    (size,) = struct.unpack_from("<I", wav, 40)
    return rate, min(size, len(wav) - HEADER_BYTES)


def decode(wav: bytes) -> tuple[int, bytes]:
    """-> (sample_rate, pcm) of a canonical WAV (see `info`)."""
    rate, size = info(wav)
    return rate, wav[HEADER_BYTES:HEADER_BYTES + size]


def fill_empty(cur_pcm: bytes, cur_occ: np.ndarray, new_pcm: bytes, new_occ: np.ndarray, frame_bytes: int
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
