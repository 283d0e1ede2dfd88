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
