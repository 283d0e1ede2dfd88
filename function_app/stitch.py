"""One stream of a recording as one WAV, produced chunk by chunk so it can be streamed with an exact
Content-Length before any audio is read.

Chunk seq k covers [k*chunkSeconds, (k+1)*chunkSeconds) on the call clock for every stream (common.layout), so
seq k is written at byte offset k*chunk_bytes: a missing seq is silence, a short chunk (a session that ended
mid-chunk) is padded with silence, and only the stream's last chunk may be shorter. The output therefore starts
at the call's clock origin, which keeps the participants' files of one call aligned sample for sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common import manifest as mf
from common import wav

log = logging.getLogger(__name__)

_SILENCE_BLOCK = bytes(64 * 1024)


class StitchError(ValueError):
    """The manifest cannot be stitched (unknown stream, inconsistent numbers)."""


def _silence(n: int) -> Iterator[bytes]:
    while n > 0:
        step = min(n, len(_SILENCE_BLOCK))
        yield _SILENCE_BLOCK[:step]
        n -= step


@dataclass(frozen=True)
class StitchedWav:
    """`content_length` is exact; iterate `body()` to get the bytes (reads one chunk blob at a time)."""

    sample_rate: int
    chunk_bytes: int
    blobs: dict[int, str]
    last_seq: int
    last_pcm: bytes
    read_blob: Callable[[str], bytes | None]

    @property
    def data_bytes(self) -> int:
        return self.last_seq * self.chunk_bytes + len(self.last_pcm)

    @property
    def content_length(self) -> int:
        return 44 + self.data_bytes

    def _pcm(self, seq: int) -> bytes:
        name = self.blobs.get(seq)
        raw = self.read_blob(name) if name else None
        if raw is None:
            if name:
                log.warning("chunk %s listed in the manifest is missing; writing silence", name)
            return b""
        try:
            rate, channels, pcm = wav.read(raw)
            if channels != 1:
                raise ValueError(f"{channels} channels, not mono")
        except ValueError as exc:
            log.error("chunk %s is unreadable (%s); writing silence", name, exc)
            return b""
        if rate != self.sample_rate:
            log.error("chunk %s is %d Hz, the manifest says %d; writing silence", name, rate, self.sample_rate)
            return b""
        return pcm

    def body(self) -> Iterator[bytes]:
        yield wav.header(self.data_bytes, self.sample_rate)
        for seq in range(self.last_seq):
            pcm = self._pcm(seq)[: self.chunk_bytes]
            if pcm:
                yield pcm
            yield from _silence(self.chunk_bytes - len(pcm))
        yield self.last_pcm

    def byte_range(self, first: int, last: int) -> Iterator[bytes]:
        """Bytes first..last (inclusive) of the file `body` writes, reading only the chunks they fall in: what
        an HTTP Range request asks for (the recordings page plays a call window by window this way)."""
        last = min(last, self.content_length - 1)
        if first > last:
            return
        head = wav.header(self.data_bytes, self.sample_rate)
        if first < len(head):
            yield head[first:last + 1]
        pos = max(first, len(head)) - len(head)
        end = last + 1 - len(head)
        while pos < end:
            seq, offset = divmod(pos, self.chunk_bytes)
            take = min(end - pos, self.chunk_bytes - offset)
            yield self.pcm_at(seq)[offset:offset + take]
            pos += take

    def pcm_at(self, seq: int) -> bytes:
        """The PCM at chunk `seq` exactly as `body` writes it: a whole chunk (short or missing ones padded with
        silence) before the last, the last chunk's own length at it, nothing after."""
        if seq > self.last_seq:
            return b""
        if seq == self.last_seq:
            return self.last_pcm
        pcm = self._pcm(seq)[: self.chunk_bytes]
        return pcm if len(pcm) == self.chunk_bytes else pcm + bytes(self.chunk_bytes - len(pcm))


def stream_chunks(manifest: mf.Manifest, stream: str) -> dict[int, str]:
    entry = manifest.stream(stream)
    if entry is None:
        raise StitchError(f"no stream {stream!r} in this recording")
    prefix = f"{manifest.call_connection_id}/"
    return {c.seq: c.blob for c in entry.chunks if c.blob.startswith(prefix)}


def stitch(manifest: mf.Manifest, stream: str, read_blob: Callable[[str], bytes | None], *,
           max_data_bytes: int | None = wav.MAX_DATA_BYTES) -> StitchedWav:
    """Plan the stitched WAV of `stream`. Reads only the last chunk now (its length fixes Content-Length).
    `max_data_bytes=None`: no single-file limit (the finalizer splits long files into parts)."""
    rate, seconds = manifest.sample_rate, manifest.chunk_seconds
    if rate is None or seconds is None:
        raise StitchError("manifest has no sampleRate/chunkSeconds yet")
    chunk_bytes = round(seconds * rate) * 2
    blobs = stream_chunks(manifest, stream)
    seqs = sorted(blobs)
    last_pcm = b""
    while seqs:  # the last chunk that can actually be read defines the end
        plan = StitchedWav(rate, chunk_bytes, blobs, seqs[-1], b"", read_blob)
        last_pcm = plan._pcm(seqs[-1])[:chunk_bytes]
        if last_pcm:
            break
        seqs.pop()
    last_seq = seqs[-1] if seqs else 0
    result = StitchedWav(rate, chunk_bytes, blobs, last_seq, last_pcm, read_blob)
    if max_data_bytes is not None and result.data_bytes > max_data_bytes:
        raise StitchError("recording is too long for one WAV file; its finished files are split into parts")
    return result
