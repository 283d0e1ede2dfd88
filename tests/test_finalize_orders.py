"""Finalization joins the two planes' conditions, whichever comes last: real streamer processes, the real function
code behind the local host with its FinalizeRecording queue trigger, one Azurite. No timer is involved: each test
waits well under the sweep's five minutes.

- close first: the last session closes while the call is still connected (the streamer reads the call state, sees
  it live, asks nothing); the CallDisconnected callback then asks, and the finalizer finds everything settled;
- callback first: CallDisconnected arrives while a session still streams (the finalizer finds it open and drops
  the request); the streamer's last write then reads the ended call state and asks (`sessions_settled`);
- two replicas in turn: one call's sessions on two streamer processes, finalized into one file on one clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.asyncio.client import connect

from common import manifest as mf
from common import wav
from common.layout import recording_blob
from common.recording import RecordingStatus
from common.recording import loads as load_recording
from devstack.azurite import Azurite
from function_app.finalize import SETTLE_SECONDS
from tests.acs_frames import at, audio, iso, metadata, tone_pcm
from tests.functions_support import HostUnderTest, hosted, make_settings, new_container, store_for
from tests.test_functions_callbacks import event, streaming
from tests.test_streamer_ws import headers, send_all

FINALIZE_WITHIN = 30.0  # the promise, from the later of the two conditions


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    name = new_container()
    store_for(azurite, name)
    return name


@pytest.fixture(scope="module")
def host(azurite: Azurite, container: str) -> Iterator[HostUnderTest]:
    with hosted(make_settings(azurite, container), env={"RecordingsStorage": azurite.connection_string}) as h:
        yield h


def _callbacks(host: HostUnderTest, *events: dict[str, Any]) -> None:
    with host.client(key=None) as http:
        assert http.post("/callbacks", json=list(events)).status_code == 200


def _now() -> str:
    return iso(datetime.now(UTC))


def _connected(host: HostUnderTest, call: str) -> None:
    started = streaming("mediaStreamingStarted", "subscriptionStarted")
    _callbacks(host, event("CallConnected", call, _now()), event("MediaStreamingStarted", call, _now(), **started))


def _disconnected(host: HostUnderTest, call: str) -> None:
    _callbacks(host, event("MediaStreamingStopped", call, _now(), **streaming("mediaStreamingStopped", "x")),
               event("CallDisconnected", call, _now()))


def _ready(container: Any, call: str, since: float) -> Any:
    deadline = since + FINALIZE_WITHIN
    while time.monotonic() < deadline:
        try:
            rec = load_recording(container.download_blob(recording_blob(call)).readall())
            if rec.status == RecordingStatus.READY:
                return rec
        except Exception:  # not there yet
            pass
        time.sleep(0.25)
    raise AssertionError(f"{call} was not ready within {FINALIZE_WITHIN} s of the later condition")


def _finished_pcm(container: Any, rec: Any) -> bytes:
    (f,) = [f for f in rec.files if f.kind == "stream"]
    rate, channels, pcm = wav.read(container.download_blob(f.blob).readall())
    assert (rate, channels) == (16000, 1)
    return pcm


def _streamer(streamer_factory: Any, container: str) -> Any:
    return streamer_factory(RECORDINGS_CONTAINER=container, STREAMER_CALL_CHECK="enabled")


def test_close_first_then_the_callback(host: HostUnderTest, container: str, streamer_factory: Any,
                                       token_issuer: Any) -> None:
    s = _streamer(streamer_factory, container)
    call = f"ord-{uuid.uuid4().hex[:12]}"
    _connected(host, call)
    frames = tone_pcm(150, seed=41)
    msgs: list[str | bytes | float] = [metadata(), *(audio(f, at(i), participant=None) for i, f in enumerate(frames))]
    asyncio.run(send_all(s.ws, msgs, headers(token_issuer.token(), call)))
    deadline = time.monotonic() + 15  # the session settles; the call is live, so nobody has asked yet
    while not _settled(s.container, call):
        assert time.monotonic() < deadline, "the session did not settle"
        time.sleep(0.2)
    assert not s.container.get_blob_client(recording_blob(call)).exists()
    t = time.monotonic()
    _disconnected(host, call)
    rec = _ready(s.container, call, t)
    assert _finished_pcm(s.container, rec) == b"".join(frames)


def test_callback_first_then_the_last_close(host: HostUnderTest, container: str, streamer_factory: Any,
                                            token_issuer: Any, caplog: pytest.LogCaptureFixture) -> None:
    s = _streamer(streamer_factory, container)
    call = f"ord-{uuid.uuid4().hex[:12]}"
    _connected(host, call)
    frames = tone_pcm(150, seed=42)

    async def run() -> float:
        async with connect(s.ws, additional_headers=headers(token_issuer.token(), call)) as ws:
            await ws.send(metadata())
            for i, f in enumerate(frames[:75]):
                await ws.send(audio(f, at(i), participant=None))
            await asyncio.to_thread(_disconnected, host, call)  # the call ends while this session streams
            # the callback's request comes, waits out the settle time and finds the session open
            await asyncio.to_thread(_wait_for, lambda: f"finalize {call}: sessions still settling" in caplog.text,
                                    SETTLE_SECONDS + 10)
            for i, f in enumerate(frames[75:], start=75):
                await ws.send(audio(f, at(i), participant=None))
        return time.monotonic()

    with caplog.at_level(logging.INFO, logger="function_app.finalize"):
        closed = asyncio.run(run())
        rec = _ready(s.container, call, closed)  # asked by the streamer: no timer runs here
    assert _finished_pcm(s.container, rec) == b"".join(frames)  # what came after the callback too


def test_a_call_streamed_on_two_replicas_in_turn_is_one_file(host: HostUnderTest, container: str,
                                                             streamer_factory: Any, token_issuer: Any) -> None:
    a, b = _streamer(streamer_factory, container), _streamer(streamer_factory, container)
    call = f"ord-{uuid.uuid4().hex[:12]}"
    _connected(host, call)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=8)
    first, second = tone_pcm(100, seed=43), tone_pcm(100, seed=44)
    asyncio.run(send_all(a.ws, [metadata(), *(audio(f, at(i, start), participant=None)
                                              for i, f in enumerate(first))], headers(token_issuer.token(), call)))
    # streaming stopped and restarted, landing on the other replica 2 s of call clock later
    asyncio.run(send_all(b.ws, [metadata(), *(audio(f, at(200 + i, start), participant=None)
                                              for i, f in enumerate(second))], headers(token_issuer.token(), call)))
    t = time.monotonic()
    _disconnected(host, call)
    rec = _ready(a.container, call, t)
    frame = 640
    assert _finished_pcm(a.container, rec) == b"".join(first) + bytes(100 * frame) + b"".join(second)
    manifest = mf.loads(a.container.download_blob(f"{call}/manifest.json").readall())
    assert len(manifest.sessions) == 2 and all(x.complete for x in manifest.sessions)


def _wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _settled(container: Any, call: str) -> bool:
    try:
        m = mf.loads(container.download_blob(f"{call}/manifest.json").readall())
    except Exception:  # not there yet
        return False
    return bool(m.sessions) and all(x.settled for x in m.sessions)
