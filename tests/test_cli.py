"""`acsrec` against the local functions host (`python -m devstack.functions_host`, configured from env) with the
ACS simulator behind it and Azurite for state and audio: the same requests it sends to a deployed app."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from typer.testing import CliRunner

from common.layout import chunk_blob, stream_id
from devstack.azurite import Azurite
from devstack.ports import free_port, wait_for_port
from devstack.serve import ServerThread
from devstack.simulator import CallScript, SimulatorConfig, SimulatorServer
from function_app.store import RecordingStore
from recorder_cli.main import app
from tests.functions_support import make_settings, new_container, put_recording, store_for

REPO = Path(__file__).resolve().parent.parent
KEY = "cli-test-key"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    script = CallScript(duration_s=None, speakers=2, connect_delay_s=0.05)
    with SimulatorServer(SimulatorConfig(pace=0, default_script=script, ws_open_timeout_s=1.0)) as server:
        yield server


@pytest.fixture(scope="module")
def media_sink() -> Iterator[str]:
    """Stands in for the streamer: accepts ACS's WebSocket and drains it (the streamer has its own tests)."""

    async def sink(ws: WebSocket) -> None:
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive()

    with ServerThread(Starlette(routes=[WebSocketRoute("/ws/{kind}", sink)])) as server:
        yield f"ws://127.0.0.1:{server.port}/ws"


@pytest.fixture(scope="module")
def stack(azurite: Azurite, sim: SimulatorServer, media_sink: str) -> Iterator[dict[str, str]]:
    port, container = free_port(), new_container()
    store_for(azurite, container)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "AZURE_", "CALLBACK", "STREAMER"))},
           "ACS_ENDPOINT": sim.url, "ACS_ACCESS_KEY": sim.access_key,
           "STREAMER_WSS_URL": media_sink,
           "CALLBACK_URL": f"http://127.0.0.1:{port}/api/callbacks", "ACS_RESOURCE_ID": sim.audience,
           "ACS_JWKS_URL": sim.jwks_url, "ACS_JWT_ISSUER": sim.issuer, "ACS_SOURCE_CALLER_ID": "+15550000000",
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "RECORDINGS_CONTAINER": container,
           "ALLOWED_TARGETS": "+1555"}
    proc = subprocess.Popen([sys.executable, "-m", "devstack.functions_host", "--port", str(port), "--key", KEY,
                             "--log-level", "WARNING"], cwd=REPO, env=env)
    try:
        wait_for_port(port, 30)
        yield {"url": f"http://127.0.0.1:{port}", "container": container}
    finally:
        proc.terminate()
        proc.wait(15)


def acsrec(stack: dict[str, str], *args: str, key: str = KEY) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--url", stack["url"], f"--key={key}", *args])
    return result.exit_code, result.stdout, result.stderr


def test_place_a_call_follow_it_and_hang_up(stack: dict[str, str], sim: SimulatorServer) -> None:
    code, out, err = acsrec(stack, "call", "+15551234567", "--unmixed", "--rate", "24000", "--dtmf",
                            "--context", "cli")
    assert code == 0, err
    placed = json.loads(out)
    call_id = placed["callConnectionId"]
    assert placed["recordingUrl"] == f"{stack['url']}/api/recordings/{call_id}"
    (create,) = [r for r in sim.requests() if r["pathAndQuery"].startswith("/calling/callConnections?")
                 and orjson.loads(r["body"]).get("operationContext") == "cli"]
    options = orjson.loads(create["body"])["mediaStreamingOptions"]
    assert (options["audioChannelType"], options["audioFormat"], options["enableDtmfTones"]) == (
        "unmixed", "pcm24KMono", True)
    assert options["transportUrl"].endswith("/ws/unmixed")

    deadline = time.monotonic() + 15
    while True:  # the simulator's JWT-signed callbacks reach the host and update the state
        code, out, err = acsrec(stack, "recordings", "show", call_id)
        assert code == 0, err
        if json.loads(out)["callState"]["status"] == "connected":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)

    code, out, _ = acsrec(stack, "recordings", "list")
    assert code == 0 and call_id in out and "outbound" in out

    sim.wait_for_callback(call_id, "MediaStreamingStarted")
    code, out, err = acsrec(stack, "streaming", "stop", call_id)
    assert code == 0, err
    assert json.loads(out) == {"callConnectionId": call_id, "streaming": "stopping"}
    sim.wait_for_callback(call_id, "MediaStreamingStopped")
    code, out, err = acsrec(stack, "streaming", "start", call_id)
    assert code == 0, err
    assert json.loads(out)["streaming"] == "starting"
    code, out, err = acsrec(stack, "hangup", call_id)
    assert code == 0 and f"hung up {call_id}" in out, err
    record = sim.wait_until_ended(call_id)
    assert "CallDisconnected" in [c["type"] for c in record["callbacks"]]
    state = json.loads(acsrec(stack, "recordings", "show", call_id)[1])["callState"]
    assert (state["status"], state["streaming"]) == ("disconnected", "stopped")
    assert [e["type"] for e in state["events"]][:2] == ["CallConnected", "MediaStreamingStarted"]


def test_download_a_stitched_wav_with_progress(stack: dict[str, str], azurite: Azurite, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = RecordingStore.from_settings(make_settings(azurite, stack["container"]))
    call_id = str(uuid.uuid4())
    alice = "8:acs:res_alice"
    c0, c2 = os.urandom(32000), os.urandom(5000)
    put_recording(store, call_id, {alice: {0: c0, 2: c2}, "4:+15551234567": {1: os.urandom(32000)}})
    target = tmp_path / "alice.wav"
    code, out, err = acsrec(stack, "download", call_id, "--participant", alice, "-o", str(target))
    assert code == 0, err
    data = target.read_bytes()
    assert data[44:] == c0 + bytes(32000) + c2 and len(data) == 44 + 64000 + 5000
    assert f"wrote {target} ({len(data)} bytes)" in out and "alice.wav" in out  # progress label + summary
    assert not (tmp_path / "alice.wav.part").exists()

    monkeypatch.chdir(tmp_path)  # without -o the server's file name is used
    code, out, err = acsrec(stack, "download", call_id, "--participant", "4:+15551234567")
    assert code == 0, err
    default = tmp_path / f"{call_id}-{stream_id('4:+15551234567')}.wav"
    assert default.read_bytes()[44:76044] == bytes(32000) + store.read_blob(
        chunk_blob(call_id, stream_id("4:+15551234567"), 1))[44:]


def test_errors_are_readable(stack: dict[str, str]) -> None:
    code, _, err = acsrec(stack, "call", "not-a-number")
    assert code == 1 and "InvalidRequest: target:" in err
    code, _, err = acsrec(stack, "call", "+4420123456789")
    assert code == 1 and "TargetNotAllowed" in err
    code, _, err = acsrec(stack, "recordings", "list", key="wrong")
    assert code == 1 and "unauthorized" in err
    code, _, err = acsrec(stack, "download", "no-such-call")
    assert code == 1 and "RecordingNotFound" in err
    code, _, err = acsrec(stack, "hangup", "4c1f5600-0000-0000-0000-000000000000")
    assert code == 1 and "CallNotFound" in err


def test_console_script_is_installed(stack: dict[str, str]) -> None:
    exe = Path(sys.executable).with_name("acsrec")
    proc = subprocess.run([str(exe), "recordings", "list", "--json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ACSREC_URL": stack["url"], "ACSREC_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    assert "items" in json.loads(proc.stdout)


COMMANDS = {"call": ["+15551234567"], "hangup": ["c1"], "streaming start": ["c1"], "streaming stop": ["c1"],
            "recordings list": [], "recordings show": ["c1"], "recordings wait": ["c1"],
            "recordings verify": ["c1"], "download": ["c1"]}


def test_every_command_shares_the_one_error_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from recorder_cli.main import reports_failures

    wrapper = reports_failures(lambda: None).__code__.co_qualname
    registered = {(c.name or c.callback.__name__): c for c in app.registered_commands}
    for group in app.registered_groups:
        assert isinstance(group.typer_instance, typer.Typer)
        registered |= {f"{group.name} {c.name}": c for c in group.typer_instance.registered_commands}
    assert set(registered) == set(COMMANDS)
    for name, command in registered.items():
        assert command.callback.__code__.co_qualname == wrapper, name
    monkeypatch.chdir(tmp_path)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: every command fails the same way
    for name, rest in COMMANDS.items():
        args = [*name.split(), *rest]
        result = CliRunner().invoke(app, ["--url", closed, "--timeout", "5", *args])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.exception)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, args
    assert not list(tmp_path.iterdir())  # no partial download left behind
