"""RIFF/WAVE for 16-bit little-endian mono PCM — chunk encoding and the overlay merge of two writes of one chunk."""

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


def overlay(existing_pcm: bytes, new_pcm: bytes, mask: bytes, frame_bytes: int) -> bytes:
    """Existing chunk audio with the frames flagged in `mask` (one byte per frame slot) taken from `new_pcm`.

    Two writers of one chunk (an early seal and a late resume, or the last chunk of one streaming session and
    the first of the next) each own disjoint slots, so the union loses neither's audio."""
    size = max(len(existing_pcm), len(new_pcm))
    slots = -(-size // frame_bytes)
    out = np.zeros(slots * frame_bytes, dtype=np.uint8)
    out[: len(existing_pcm)] = np.frombuffer(existing_pcm, dtype=np.uint8)
    new = np.zeros(slots * frame_bytes, dtype=np.uint8)
    new[: len(new_pcm)] = np.frombuffer(new_pcm, dtype=np.uint8)
    m = np.zeros(slots, dtype=bool)
    flags = np.frombuffer(mask, dtype=np.uint8)[:slots].astype(bool)
    m[: len(flags)] = flags
    out2 = out.reshape(slots, frame_bytes)
    out2[m] = new.reshape(slots, frame_bytes)[m]
    return out[:size].tobytes()
