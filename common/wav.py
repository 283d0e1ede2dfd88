"""RIFF/WAVE for 16-bit little-endian PCM — the one place both planes, the tests and the devstack write and read it.

Writers emit the canonical 44-byte header for a length known up front, so a stitched download can announce an
exact Content-Length before any audio is read. `read` walks the RIFF chunks (a file from another tool may carry
LIST or fact chunks before `data`); `info` is the cheap path for our own chunks, whose header is canonical.
"""

from __future__ import annotations

import struct

HEADER_BYTES = 44
MAX_DATA_BYTES = 0xFFFFFFFF - 36  # RIFF sizes are 32-bit
_FMT = struct.Struct("<HHIIHH")


def header(pcm_bytes: int, sample_rate: int, channels: int = 1) -> bytes:
    """Canonical header for `pcm_bytes` of 16-bit PCM (raises ValueError beyond RIFF's 4 GiB)."""
    if not 0 <= pcm_bytes <= MAX_DATA_BYTES:
        raise ValueError(f"{pcm_bytes} bytes of PCM do not fit a RIFF/WAVE file")
    block_align = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + pcm_bytes, b"WAVE",
        b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, 16,
        b"data", pcm_bytes,
    )


def encode(pcm: bytes | memoryview, sample_rate: int, channels: int = 1) -> bytes:
    """One copy: header + PCM."""
    return b"".join((header(len(pcm), sample_rate, channels), pcm))


def info(data: bytes, *, exact: bool = False) -> tuple[int, int]:
    """-> (sample_rate, PCM bytes) from a canonical 44-byte-header mono s16 WAV (what `encode` writes), without
    touching the PCM. `exact`: the header's size must be the file's (a stored chunk whose header was edited would
    otherwise hide the audio past it)."""
    if len(data) < HEADER_BYTES or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt, channels, rate, _, _, bits = _FMT.unpack_from(data, 20)
    if fmt != 1 or channels != 1 or bits != 16 or data[36:40] != b"data":
        raise ValueError("not 16-bit mono PCM with a canonical header")
    if rate == 0:
        raise ValueError("sample rate 0")
    (size,) = struct.unpack_from("<I", data, 40)
    if exact and size != len(data) - HEADER_BYTES:
        raise ValueError(f"header says {size} PCM bytes, the file holds {len(data) - HEADER_BYTES}")
    return rate, min(size, len(data) - HEADER_BYTES)


def decode(data: bytes, *, exact: bool = False) -> tuple[int, bytes]:
    """-> (sample_rate, pcm) of a canonical mono WAV (see `info`)."""
    rate, size = info(data, exact=exact)
    return rate, data[HEADER_BYTES:HEADER_BYTES + size]


def read(data: bytes) -> tuple[int, int, bytes]:
    """-> (sample_rate, channels, pcm) of any 16-bit PCM WAV, walking its RIFF chunks. A truncated `data` chunk
    yields what is there (whole samples only)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < _FMT.size:
                raise ValueError("WAV fmt chunk is too short")
            tag, channels, rate, _, _, bits = _FMT.unpack_from(body)
            if tag != 1 or bits != 16 or channels < 1:
                raise ValueError(f"unsupported WAV format {tag}/{channels}ch/{bits}bit (16-bit PCM only)")
            fmt = (rate, channels)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("WAV data before fmt")
            frame = 2 * fmt[1]
            return fmt[0], fmt[1], body[: len(body) - len(body) % frame]
        pos += 8 + size + (size & 1)
    raise ValueError("WAV has no data chunk")
