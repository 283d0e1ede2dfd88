"""Micro-benchmark of the streamer's per-frame path (`Session.on_message`), in process, without sockets.

    .venv/bin/python -m benchmarks.frame_path

Prints µs per frame for the path — with frames arriving at ACS's cadence (what production sees), and all at once
(the worst case of the receive-clock checks) — and for its floor (orjson.loads + base64 decode alone), so a
regression in our own Python shows up apart from the server's socket and framework costs.
"""

from __future__ import annotations

import binascii
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

import orjson
import pybase64

from devstack.simulator.frames import audio_data, audio_metadata, format_timestamp
from streamer.metrics import Metrics
from streamer.session import Session, SessionConfig
from streamer.sink import Spool

N = 100_000


class _NullSink:
    spool = Spool(Path(tempfile.mkdtemp(prefix="frame-path-spool-")))

    def submit(self, job: object) -> Future[object]:
        return Future()  # never lands: only the frame path is measured


def _run(frames: list[str], t0_ms: int, *, cadence: bool) -> float:
    """µs per frame of `Session.on_message` over `frames`. With `cadence`, the session's receive clock advances
    20 ms per frame, as frames arrive from ACS (each one 30 ms after its timestamp); without, every frame arrives
    at once, far ahead of its timestamp (the placement then re-checks each frame against the receive clock)."""
    import streamer.session as session_module

    config = SessionConfig()
    sink = _NullSink()
    session = Session("bench-call", "corr", "mixed", store=None, sink=sink,  # type: ignore[arg-type]
                      spool=sink.spool, metrics=Metrics(), config=config)
    session.adopt_clock(t0_ms / 1000, config.chunk_seconds)
    session.on_message(audio_metadata("sub", 16000))
    real_wall = session_module._wall
    if cadence:
        arrivals = iter(range(N + 10))
        base = t0_ms / 1000 + 0.03
        session_module._wall = lambda: base + next(arrivals) * 0.02  # as cheap a call as time.time()
    try:
        start = time.perf_counter()
        for f in frames:
            session.on_message(f)
        return (time.perf_counter() - start) / N * 1e6
    finally:
        session_module._wall = real_wall


def main() -> None:
    data = binascii.b2a_base64(bytes(range(256)) * 2 + bytes(128), newline=False).decode()
    t0 = int(time.time() * 1000)
    frames = [audio_data(format_timestamp(t0 + 20 * i), data, False, '"participantRawID":"8:acs:x",')
              for i in range(N)]
    cadence = _run(frames, t0, cadence=True)
    burst = _run(frames, t0, cadence=False)
    start = time.perf_counter()
    for f in frames:
        pybase64.b64decode(orjson.loads(f)["audioData"]["data"], validate=True)
    floor = (time.perf_counter() - start) / N * 1e6
    print(f"on_message: {cadence:.2f} us/frame at ACS's cadence, {burst:.2f} in a burst; "
          f"floor (orjson + base64): {floor:.2f} us/frame")


if __name__ == "__main__":
    main()
