"""ACS simulator: a local stand-in for Azure Communication Services Call Automation + media streaming.

Development tooling only (never imported by product code). It speaks what ACS speaks (docs/acs-protocol.md):
the REST routes the SDK calls (HMAC-verified), CloudEvents callbacks with RS256 JWTs, the IncomingCall Event Grid
event, and the media WebSocket as a client. See devstack/simulator/README.md for the module map and what is
knowingly simplified.

    from devstack.simulator import SimulatorConfig, create_app        # ASGI app for uvicorn
    from devstack.simulator import SimulatorServer                    # the same in a background thread
"""

from devstack.simulator.app import create_app
from devstack.simulator.audio import AudioSpec
from devstack.simulator.config import CallScript, SimulatorConfig
from devstack.simulator.core import CallRecord, Simulator
from devstack.simulator.media import Faults, MediaPlan, stream_connection
from devstack.simulator.server import SimulatorServer

__all__ = ["AudioSpec", "CallRecord", "CallScript", "Faults", "MediaPlan", "Simulator", "SimulatorConfig",
           "SimulatorServer", "create_app", "stream_connection"]
