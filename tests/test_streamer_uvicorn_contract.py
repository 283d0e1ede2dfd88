"""What streamer/__main__.py takes from uvicorn beyond its public API, checked against the installed uvicorn.

The header timeout subclasses `uvicorn.protocols.http.h11_impl.H11Protocol` and relies on `self.loop` (the loop
the protocol runs on), `self.transport` (set by `connection_made`), `self.cycle` (None until a request's headers
are complete), `connection_lost`, and on an upgraded connection's transport being handed to another protocol.
The clean SIGTERM exit subclasses `uvicorn.Server` and relies on `handle_exit` being the signal handler and on
`_captured_signals` being the list of signals uvicorn re-raises after shutdown. Each test below fails when one of
these disappears or changes meaning. Loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

import streamer.__main__ as entry

ROOT = Path(__file__).resolve().parents[1]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
if sys.platform != "win32":
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop  # what the streamer runs on


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


class _Recorded(entry._HeaderTimeoutH11):
    """The streamer's protocol, remembering each instance uvicorn builds."""

    instances: ClassVar[list[_Recorded]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Recorded.instances.append(self)


def _run_with_server(loop_name: str, client: Callable[[int], Any]) -> Any:
    """Serve _asgi with the streamer's HTTP protocol and its WebSocket implementation, run `client(port)`."""

    async def main() -> Any:
        config = uvicorn.Config(_asgi, host="127.0.0.1", port=0, http=_Recorded, ws="websockets-sansio",
                                lifespan="off", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        try:
            assert config.http_protocol_class is _Recorded
            port = server.servers[0].sockets[0].getsockname()[1]
            return await client(port)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    _Recorded.instances.clear()
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(main())


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(4096), seconds):
            pass
        return True
    except TimeoutError:
        return False


@pytest.fixture
def short_header_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(entry, "HEADER_TIMEOUT_SECONDS", 0.3)
    return 0.3


def test_the_header_timeout_protocol_is_an_h11_protocol():
    assert issubclass(entry._HeaderTimeoutH11, H11Protocol)
    for name in ("connection_made", "connection_lost", "data_received"):
        assert callable(getattr(H11Protocol, name, None)), name


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_silent_connection_is_closed_and_the_protocol_holds_what_the_timer_reads(loop_name, short_header_timeout):
    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        (proto,) = _Recorded.instances
        assert proto.loop is asyncio.get_running_loop()  # where call_later schedules the timer
        assert proto.transport.get_protocol() is proto  # connection_made stored the connection's transport
        assert proto.cycle is None  # no request yet
        assert not proto._header_timer.cancelled()
        t0 = time.monotonic()
        assert await _closed_within(reader, short_header_timeout + 3)
        assert time.monotonic() - t0 >= short_header_timeout - 0.1
        writer.close()
        await asyncio.sleep(0.05)
        assert proto.transport.is_closing()

    _run_with_server(loop_name, client)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_half_sent_headers_leave_no_cycle_and_are_closed(loop_name, short_header_timeout):
    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n")  # no blank line: the headers never end
        await asyncio.sleep(0.05)
        (proto,) = _Recorded.instances
        assert proto.cycle is None
        assert await _closed_within(reader, short_header_timeout + 3)
        writer.close()

    _run_with_server(loop_name, client)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_a_complete_request_sets_the_cycle_and_keeps_the_connection(loop_name, short_header_timeout):
    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
        (proto,) = _Recorded.instances
        assert proto.cycle is not None  # a request arrived: the timer must leave the connection alone
        assert not await _closed_within(reader, short_header_timeout * 3)  # outlived the header timeout
        writer.write(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n")  # and still serves keep-alive requests
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        await asyncio.sleep(0.05)
        assert proto._header_timer.cancelled() or proto.transport.is_closing()

    _run_with_server(loop_name, client)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_an_upgraded_websocket_leaves_the_h11_protocol_and_outlives_the_timer(loop_name, short_header_timeout):
    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        (proto,) = _Recorded.instances
        new_protocol = proto.transport.get_protocol()
        assert new_protocol is not proto  # the socket now belongs to the WebSocket implementation
        assert type(new_protocol).__module__ == "uvicorn.protocols.websockets.websockets_sansio_impl"
        assert not await _closed_within(reader, short_header_timeout * 3)  # the timer fired and did nothing
        assert not proto.transport.is_closing()
        writer.write(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")  # masked close frame, code 1000
        assert await _closed_within(reader, 5)
        writer.close()

    _run_with_server(loop_name, client)


# -- uvicorn.Server: handle_exit and _captured_signals ------------------------------------------------------------

@pytest.fixture
def recorded_signals():
    """SIGINT/SIGTERM recorded instead of acted on, for what uvicorn re-raises after its handlers are removed."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread only")
    received: list[int] = []
    previous = {s: signal.signal(s, lambda sig, _frame: received.append(sig)) for s in (signal.SIGINT,
                                                                                       signal.SIGTERM)}
    yield received
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _state() -> SimpleNamespace:
    return SimpleNamespace(runtime=SimpleNamespace(registry=SimpleNamespace(draining=False)))


def test_uvicorn_re_raises_the_signals_it_captured(recorded_signals):
    """The meaning of _captured_signals: what handle_exit stored is raised again once uvicorn is done."""
    server = uvicorn.Server(uvicorn.Config(_asgi))
    assert server._captured_signals == []
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit  # the handler is handle_exit
        signal.raise_signal(signal.SIGTERM)
        assert server.should_exit
        assert server._captured_signals == [signal.SIGTERM]
        assert recorded_signals == []
    assert recorded_signals == [signal.SIGTERM]


def test_the_streamer_server_drains_on_sigterm_without_re_raising_it(recorded_signals):
    state = _state()
    server = entry._Server(uvicorn.Config(_asgi), state)
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        signal.raise_signal(signal.SIGTERM)
        assert state.runtime.registry.draining  # readiness flips at once
        assert server.should_exit
        assert signal.SIGTERM not in server._captured_signals
    assert recorded_signals == []  # so a completed drain exits 0, not -15


def test_the_streamer_server_leaves_sigint_to_uvicorn(recorded_signals):
    state = _state()
    server = entry._Server(uvicorn.Config(_asgi), state)
    with server.capture_signals():
        signal.raise_signal(signal.SIGINT)
        assert state.runtime.registry.draining and server.should_exit
    assert recorded_signals == [signal.SIGINT]


_SERVE = textwrap.dedent("""
    import sys, types, uvicorn
    from streamer.__main__ import _Server

    async def app(scope, receive, send):
        pass

    cls = _Server if sys.argv[1] == "streamer" else uvicorn.Server
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", ws="websockets-sansio",
                            loop=sys.argv[2], log_level="info")
    state = types.SimpleNamespace(runtime=types.SimpleNamespace(registry=None))
    server = cls(config, state) if cls is _Server else cls(config)
    server.run()
""")


@pytest.mark.parametrize(("server", "status"), [("streamer", 0), ("uvicorn", -signal.SIGTERM)])
def test_sigterm_exit_status_of_a_real_server_process(server, status):
    loop = "uvloop" if "uvloop" in LOOPS else "asyncio"
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, server, loop], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        for line in proc.stderr:
            if "Uvicorn running on" in line:
                break
            assert time.monotonic() < deadline and proc.poll() is None, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
