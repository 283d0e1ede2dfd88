"""Reads a recording back from Blob Storage the way a consumer would: manifest first, then chunks by seq."""

from __future__ import annotations

import hashlib
import json
import time
import wave
from io import BytesIO
from typing import Any

from azure.storage.blob import ContainerClient


def manifest(container: ContainerClient, call_id: str) -> dict[str, Any]:
    return json.loads(container.download_blob(f"{call_id}/manifest.json").readall())


def wait_complete(container: ContainerClient, call_id: str, timeout: float = 20.0, sessions: int = 1
                  ) -> dict[str, Any]:
    """Poll until the manifest is complete and lists at least `sessions` streaming sessions."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            last = manifest(container, call_id)
            if last.get("complete") and len(last.get("sessions", [])) >= sessions:
                return last
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"manifest of {call_id} not complete after {timeout}s: {json.dumps(last)[:2000]}")


def read_wav(container: ContainerClient, blob: str) -> tuple[int, bytes]:
    data = container.download_blob(blob).readall()
    with wave.open(BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getframerate(), w.readframes(w.getnframes())


def stitched(container: ContainerClient, m: dict[str, Any], stream: str) -> bytes:
    """Whole stream on the call clock: chunk k at k * chunkSeconds, silence where nothing was written."""
    entry = next(s for s in m["streams"] if s["stream"] == stream)
    chunk_bytes = round(m["chunkSeconds"] * m["sampleRate"]) * 2
    out = bytearray()
    for c in entry["chunks"]:
        rate, pcm = read_wav(container, c["blob"])
        assert rate == m["sampleRate"]
        data = container.download_blob(c["blob"]).readall()
        assert hashlib.sha256(data).hexdigest() == c["sha256"], "manifest sha256 does not match the blob"
        start = c["seq"] * chunk_bytes
        if len(out) < start:
            out.extend(bytes(start - len(out)))
        out[start:start + len(pcm)] = pcm
    return bytes(out)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
