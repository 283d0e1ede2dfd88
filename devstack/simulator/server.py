"""Run the simulator in a background thread (tests, demo, benchmark) and talk to it from synchronous code.

    with SimulatorServer(SimulatorConfig(pace=0)) as sim:
        client = sim.client()                       # the real SDK, HMAC-signed with the simulator's key
        props = client.create_call(...)
        sim.wait_for_callback(props.call_connection_id, "CallDisconnected")
        record = sim.call(props.call_connection_id)  # what was sent: callbacks, connections, per-stream sha256
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from devstack.ports import free_port
from devstack.serve import ServerThread
from devstack.simulator.app import create_app
from devstack.simulator.config import CallScript, SimulatorConfig
from devstack.simulator.core import Simulator


class SimulatorServer:
    def __init__(self, config: SimulatorConfig | None = None, port: int | None = None):
        self.config = config or SimulatorConfig()
        self.port = port or free_port()
        if self.config.public_url is None:
            self.config.public_url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(self.config)
        self.simulator: Simulator = self.app.state.simulator
        self._thread = ServerThread(self.app, port=self.port)
        self._http = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    # -- addresses -----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint to give the SDK: `CallAutomationClient(sim.url, AzureKeyCredential(sim.access_key))`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_key(self) -> str:
        return self.config.access_key

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/calling/keys"

    @property
    def issuer(self) -> str:
        return self.config.issuer

    @property
    def audience(self) -> str:
        return self.config.audience

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> SimulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.close()
        self._thread.stop()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- SDK -----------------------------------------------------------------------------------------------------
    def client(self, **kwargs: Any) -> Any:
        """A real `CallAutomationClient` for this simulator (plain http, explicit endpoint; see
        docs/acs-protocol.md#hmac-request-signing)."""
        from azure.communication.callautomation import CallAutomationClient
        from azure.core.credentials import AzureKeyCredential

        return CallAutomationClient(self.url, AzureKeyCredential(self.access_key), **kwargs)

    # -- controls ------------------------------------------------------------------------------------------------
    def place_incoming_call(self, event_grid_url: str, *, from_: str = "+15551230000", to: str = "+15559870000",
                            script: CallScript | dict[str, Any] | None = None,
                            caller_display_name: str = "Simulated Caller") -> dict[str, Any]:
        """Ring the app via its Event Grid endpoint. Returns the context, ids, delivery status and the event."""
        body: dict[str, Any] = {"eventGridUrl": event_grid_url, "from": from_, "to": to,
                                "callerDisplayName": caller_display_name}
        if script is not None:
            body["script"] = script.to_dict() if isinstance(script, CallScript) else script
        resp = self._http.post("/sim/incoming-calls", json=body)
        resp.raise_for_status()
        return resp.json()

    def set_script(self, script: CallScript | dict[str, Any], target: str | None = None) -> None:
        """Far-end behaviour for calls to `target` (a raw id like "4:+15551234567"), or the default (None)."""
        payload = script.to_dict() if isinstance(script, CallScript) else script
        self._http.post("/sim/scripts", json={"target": target, "script": payload}).raise_for_status()

    def remote_hang_up(self, call_id: str) -> None:
        self._http.post(f"/sim/calls/{call_id}/hangup").raise_for_status()

    def call(self, call_id: str) -> dict[str, Any]:
        """Snapshot of a call's record (taken on the server loop, so consistent)."""
        resp = self._http.get(f"/sim/calls/{call_id}")
        resp.raise_for_status()
        return resp.json()

    def calls(self) -> list[dict[str, Any]]:
        return self._http.get("/sim/calls").json()

    def requests(self) -> list[dict[str, Any]]:
        return self._http.get("/sim/requests").json()

    def wait_for(self, call_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0,
                 what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.call(call_id)
            if predicate(record):
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"call {call_id}: no {what} after {timeout}s; callbacks so far: "
                                   f"{[c['type'] for c in record['callbacks']]}")
            time.sleep(0.02)

    def wait_for_callback(self, call_id: str, event_type: str, timeout: float = 15.0,
                          delivered: bool = True) -> dict[str, Any]:
        """The first callback of `event_type` (e.g. "CallConnected"), once its POST has completed."""

        def done(record: dict[str, Any]) -> bool:
            return any(c["type"] == event_type and (not delivered or c["status"] is not None or c["error"])
                       for c in record["callbacks"])

        record = self.wait_for(call_id, done, timeout, what=event_type)
        return next(c for c in record["callbacks"] if c["type"] == event_type)

    def wait_until_ended(self, call_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the call to be over and every callback delivered; returns the final record."""

        def done(record: dict[str, Any]) -> bool:
            return bool(record["finished"])

        return self.wait_for(call_id, done, timeout, what="end of call")

    def wait_for_answer(self, incoming_call_context: str, timeout: float = 15.0) -> str:
        """The callConnectionId the app's answer created for an incoming call."""
        deadline = time.monotonic() + timeout
        while True:
            answered = self.simulator.incoming_answered(incoming_call_context)
            if answered:
                return answered
            if time.monotonic() > deadline:
                raise TimeoutError("incoming call was not answered")
            time.sleep(0.02)
