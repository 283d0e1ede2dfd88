"""The whole system on loopback: Azurite (blob and queue), the streamer, the functions (local host), the ACS simulator
and an Event Grid topic that receives the function app's RecordingReady events.

Used by the demo (`python -m devstack.demo`) and the end-to-end test, so both exercise exactly the same wiring:
the real function code and the real Call Automation SDK talk to the simulator's REST API, the simulator calls
back with signed CloudEvents and streams signed WebSockets to the streamer, which writes to Azurite. The functions
host gets `RecordingsStorage` (the queue trigger's connection: Azurite's connection string, queue endpoint
included) and `RECORDING_EVENTS_ENDPOINT`/`RECORDING_EVENTS_KEY` (the local topic); the streamer's
AZURE_STORAGE_CONNECTION_STRING names the queue endpoint too. `stack.events()` reads what the topic received,
`stack.run_function(name, input)` runs a queue or timer function once through the host's admin endpoint.
"""

from __future__ import annotations

import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.azurite import Azurite
from devstack.eventgrid_topic import EventGridTopic
from devstack.ports import free_port
from devstack.processes import ChildProcess
from devstack.simulator import CallScript, SimulatorConfig, SimulatorServer

SOURCE_CALLER_ID = "+15550001111"


@dataclass
class LocalStack:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="acs-local-")))
    pace: float = 1.0
    chunk_seconds: float = 10.0
    default_script: CallScript = field(default_factory=CallScript)
    container: str = "recordings"
    function_key: str = field(default_factory=lambda: secrets.token_hex(24))  # never starts with "-"
    master_key: str = field(default_factory=lambda: secrets.token_hex(24))
    events_key: str = field(default_factory=lambda: secrets.token_hex(32))
    timers: bool = True  # False: the host's timer functions (the sweep) run only through run_function

    def __post_init__(self) -> None:
        self.azurite: Azurite | None = None
        self.topic: EventGridTopic | None = None
        self.simulator: SimulatorServer | None = None
        self.streamer: ChildProcess | None = None
        self.functions: ChildProcess | None = None
        self.streamer_port = free_port()
        self.functions_port = free_port()

    @property
    def functions_url(self) -> str:
        return f"http://127.0.0.1:{self.functions_port}"

    @property
    def streamer_url(self) -> str:
        return f"http://127.0.0.1:{self.streamer_port}"

    @property
    def event_grid_url(self) -> str:
        return f"{self.functions_url}/runtime/webhooks/eventgrid?functionName=IncomingCall"

    @property
    def events_endpoint(self) -> str:
        """The topic endpoint the function app publishes to (RECORDING_EVENTS_ENDPOINT)."""
        assert self.topic is not None, "the stack is not started"
        return self.topic.endpoint

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """The CloudEvents the topic has received, oldest first (optionally of one type)."""
        assert self.topic is not None, "the stack is not started"
        return self.topic.events(type)

    def wait_for_events(self, count: int = 1, *, type: str | None = None,
                        timeout: float = 30.0) -> list[dict[str, Any]]:
        assert self.topic is not None, "the stack is not started"
        return self.topic.wait_for_events(count, type=type, timeout=timeout)

    def run_function(self, name: str, input: str | None = None) -> None:
        """Runs a non-HTTP function once (POST /admin/functions/{name}, master key); returns when it is accepted,
        not when it has finished (the host answers 202 at once)."""
        resp = httpx.post(f"{self.functions_url}/admin/functions/{name}", json={"input": input},
                          headers={"x-functions-key": self.master_key}, timeout=30)
        if resp.status_code != 202:
            raise RuntimeError(f"admin run of {name}: {resp.status_code} {resp.text}")

    def start(self) -> LocalStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.azurite = Azurite(location=self.workdir / "azurite").start()
        self.topic = EventGridTopic(self.workdir / "eventgrid", key=self.events_key).start()
        self.simulator = SimulatorServer(SimulatorConfig(pace=self.pace, default_script=self.default_script)).start()
        sim = self.simulator
        auth = {"ACS_RESOURCE_ID": sim.audience, "ACS_JWKS_URL": sim.jwks_url, "ACS_JWT_ISSUER": sim.issuer}
        storage = {"AZURE_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
                   "RECORDINGS_CONTAINER": self.container}
        self.streamer = ChildProcess("streamer", {
            **auth, **storage, "PORT": str(self.streamer_port), "CHUNK_SECONDS": str(self.chunk_seconds),
            "SPOOL_DIR": str(self.workdir / "spool"), "LOG_LEVEL": "WARNING",
        }, log_path=self.workdir / "streamer.log").start(f"{self.streamer_url}/healthz")
        self.functions = ChildProcess("devstack.functions_host", {
            **auth, **storage,
            "ACS_ENDPOINT": sim.url, "ACS_ACCESS_KEY": sim.access_key,
            "STREAMER_WSS_URL": f"ws://127.0.0.1:{self.streamer_port}/ws",
            "CALLBACK_URL": f"{self.functions_url}/api/callbacks",
            "ACS_SOURCE_CALLER_ID": SOURCE_CALLER_ID,
            "DEFAULT_AUDIO_CHANNEL": "mixed", "DEFAULT_SAMPLE_RATE": "16000",
            "RecordingsStorage": self.azurite.connection_string,
            "RECORDING_EVENTS_ENDPOINT": self.topic.endpoint, "RECORDING_EVENTS_KEY": self.topic.key,
        }, args=["--port", str(self.functions_port), f"--key={self.function_key}",
                 f"--master-key={self.master_key}", "--log-level", "WARNING",
                 *([] if self.timers else ["--disable-timers"])],
            log_path=self.workdir / "functions.log").start(
                f"{self.functions_url}/api/recordings?code={self.function_key}")
        return self

    def stop(self) -> None:
        for proc in (self.functions, self.streamer):
            if proc is not None and proc.proc is not None and proc.proc.poll() is None:
                proc.terminate(60)
        if self.simulator is not None:
            self.simulator.stop()
        if self.topic is not None:
            self.topic.stop()
        if self.azurite is not None:
            self.azurite.close()

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
