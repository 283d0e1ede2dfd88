"""Session-wide real parts: Azurite, an ACS-style token issuer and the JWKS endpoint that publishes its key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.acs_tokens import TokenIssuer
from devstack.azurite import Azurite
from devstack.serve import ServerThread

ACS_RESOURCE_ID = "2b1f7c1e-5a3d-4c7e-9d61-0c9f3a7e8b10"
TEST_ISSUER = "https://acscallautomation.communication.azure.com"


@pytest.fixture(autouse=True)
def _fresh_frame_clock() -> None:
    """Frames the tests build are dated from a moment ago (see tests/acs_frames.py)."""
    from tests import acs_frames

    acs_frames.reset_start()


@pytest.fixture(autouse=True)
def _function_runtime(request: pytest.FixtureRequest) -> None:
    """Function tests share one app (module-level runtime): point it at the `host` of the test's module."""
    if "host" in request.fixturenames:
        from function_app.runtime import set_runtime

        set_runtime(request.getfixturevalue("host").runtime)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as server:
        yield server


@pytest.fixture(scope="session")
def token_issuer() -> TokenIssuer:
    return TokenIssuer(issuer=TEST_ISSUER, audience=ACS_RESOURCE_ID)


@pytest.fixture(scope="session")
def jwks_url(token_issuer: TokenIssuer) -> Iterator[str]:
    """A real HTTP JWKS endpoint on loopback serving the issuer's public key at ACS's path."""

    async def keys(_request):  # type: ignore[no-untyped-def]
        return JSONResponse(token_issuer.jwks())

    with ServerThread(Starlette(routes=[Route("/calling/keys", keys)])) as server:
        yield f"{server.url}/calling/keys"


# -- streamer under test ------------------------------------------------------------------------------------------
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from azure.storage.blob import BlobServiceClient, ContainerClient  # noqa: E402

from devstack.ports import free_port  # noqa: E402
from devstack.processes import ChildProcess  # noqa: E402


class StreamerUnderTest:
    """`python -m streamer` as a child process with its own container and spool directory."""

    def __init__(self, env: dict[str, str], container: str, connection_string: str):
        self.port = int(env["PORT"])
        self.env = env
        self.container_name = container
        self.process = ChildProcess("streamer", env)
        self.container: ContainerClient = BlobServiceClient.from_connection_string(
            connection_string).get_container_client(container)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> StreamerUnderTest:
        self.process = ChildProcess("streamer", self.env)
        self.process.start(f"{self.http}/healthz")
        return self

    def metrics(self) -> dict[str, float]:
        import httpx

        from benchmarks.harness import parse_metrics

        return parse_metrics(httpx.get(f"{self.http}/metrics", timeout=5).text)


@pytest.fixture
def streamer_factory(azurite: Azurite, jwks_url: str, tmp_path: Path
                     ) -> Iterator[Callable[..., StreamerUnderTest]]:
    started: list[StreamerUnderTest] = []

    def make(storage: Azurite | None = None, **overrides: str) -> StreamerUnderTest:
        store = storage or azurite
        container = overrides.pop("RECORDINGS_CONTAINER", f"rec-{uuid.uuid4().hex[:12]}")
        env = {
            "PORT": str(free_port()),
            "AZURE_STORAGE_CONNECTION_STRING": store.connection_string,
            "ACS_RESOURCE_ID": ACS_RESOURCE_ID,
            "ACS_JWKS_URL": jwks_url,
            "ACS_JWT_ISSUER": TEST_ISSUER,
            "RECORDINGS_CONTAINER": container,
            "CHUNK_SECONDS": "1",
            "SPOOL_DIR": str(tmp_path / f"spool-{len(started)}"),
            "SHUTDOWN_GRACE_SECONDS": "10",
            "LOG_LEVEL": "INFO",
            # These tests drive the streamer with made-up call ids, without a control plane to record the calls;
            # the check itself is tested with it on (test_streamer_integrity.py), and so is the whole loop
            # (test_e2e.py, the benchmark harness).
            "STREAMER_CALL_CHECK": "disabled",
            **overrides,
        }
        s = StreamerUnderTest(env, container, store.connection_string).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.process.kill()


# -- ACS-facing capture server for the simulator's fidelity tests ---------------------------------------------------
from tests._simulator_fixtures import Capture  # noqa: E402


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    """A tiny app standing where ours would: records raw WebSocket messages, callbacks and Event Grid posts."""
    cap = Capture()
    with cap.server:
        yield cap
