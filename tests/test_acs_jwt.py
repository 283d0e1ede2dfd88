"""The ACS JWT verifier shared by the streamer and the callbacks endpoint, against a real JWKS over HTTP."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.acs_jwt import AcsJwtVerifier, AuthConfig, AuthError, bearer_token
from devstack.acs_tokens import TokenIssuer
from devstack.serve import ServerThread
from tests.conftest import ACS_RESOURCE_ID, TEST_ISSUER


def verifier(jwks_url: str, **kw) -> AcsJwtVerifier:
    return AcsJwtVerifier(AuthConfig(TEST_ISSUER, ACS_RESOURCE_ID, jwks_url), **kw)


def verify(v: AcsJwtVerifier, token: str) -> dict:
    return asyncio.run(v.verify_async(token))


def test_valid_token_passes(token_issuer, jwks_url):
    claims = verify(verifier(jwks_url), token_issuer.token())
    assert claims["aud"] == ACS_RESOURCE_ID and claims["iss"] == TEST_ISSUER


@pytest.mark.parametrize("case", ["audience", "issuer", "expired", "not_yet_valid", "hs256", "no_kid"])
def test_bad_tokens_are_refused(token_issuer, jwks_url, case):
    import jwt as pyjwt

    token = {
        "audience": lambda: token_issuer.token(audience="11111111-1111-1111-1111-111111111111"),
        "issuer": lambda: token_issuer.token(issuer="https://acscallautomation.communication.azure.com.evil"),
        "expired": lambda: token_issuer.token(now=1_000_000, lifetime=300),
        "not_yet_valid": lambda: token_issuer.token(now=4_000_000_000),
        "hs256": lambda: pyjwt.encode({"iss": TEST_ISSUER, "aud": ACS_RESOURCE_ID, "exp": 4_000_000_000}, "k" * 32,
                                      algorithm="HS256", headers={"kid": token_issuer.kid}),
        "no_kid": lambda: pyjwt.encode({"iss": TEST_ISSUER}, token_issuer._key, algorithm="RS256"),
    }[case]()
    with pytest.raises(AuthError):
        verify(verifier(jwks_url), token)


def test_unknown_kid_refetches_once_then_is_rate_limited():
    issuers = [TokenIssuer(TEST_ISSUER, ACS_RESOURCE_ID, kid="k1")]
    fetches = []

    async def keys(_request):  # type: ignore[no-untyped-def]
        fetches.append(1)
        return JSONResponse({"keys": [k for i in issuers for k in i.jwks()["keys"]]})

    with ServerThread(Starlette(routes=[Route("/calling/keys", keys)])) as srv:
        v = verifier(f"{srv.url}/calling/keys", min_refetch_seconds=60)
        verify(v, issuers[0].token())
        issuers.append(TokenIssuer(TEST_ISSUER, ACS_RESOURCE_ID, kid="k2"))  # ACS rotates its keys
        v._fetched_at -= 61
        verify(v, issuers[1].token())  # unknown kid -> one refetch
        assert len(fetches) == 2
        for _ in range(5):
            with pytest.raises(AuthError, match="unknown signing key"):
                verify(v, TokenIssuer(TEST_ISSUER, ACS_RESOURCE_ID, kid="made-up").token())
        assert len(fetches) == 2  # a flood of made-up kids does not hammer the JWKS


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer ", "abc"):
        with pytest.raises(AuthError):
            bearer_token(bad)


def test_audience_is_required():
    with pytest.raises(ValueError):
        AcsJwtVerifier(AuthConfig(TEST_ISSUER, "", "http://127.0.0.1:1/keys"))
