"""devstack.functions_host over real HTTP: routes, methods and auth levels taken from the declared bindings, the
Event Grid webhook rules, classic and HTTP-streams functions, and `python -m devstack.functions_host` from env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest

import function_entry
from devstack.azurite import Azurite
from devstack.functions_host import Keys, build_app, indexed_functions, starlette_path
from devstack.ports import free_port, wait_for_port
from devstack.serve import ServerThread
from function_app.settings import SettingsError
from tests.functions_support import ACCESS_KEY

REPO = Path(__file__).resolve().parent.parent
KEYS = Keys(frozenset({"fk1", "fk2"}), "master", eventgrid_key="egkey")

toy = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
SEEN: list[tuple[str, object, str | None]] = []


@toy.function_name("Echo")
@toy.route(route="echo/{name}/{count:int}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    body = {"name": req.route_params["name"], "count": req.route_params["count"], "q": req.params.get("q"),
            "method": req.method, "body": req.get_body().decode()}
    return func.HttpResponse(json.dumps(body), status_code=201, mimetype="application/json",
                             headers={"x-toy": "1"})


@toy.function_name("Admin")
@toy.route(route="admin/thing", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def admin(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")


@toy.function_name("Files")
@toy.route(route="files/{*path}", methods=["GET"])
def files(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.route_params["path"])


@toy.function_name("Grid")
@toy.event_grid_trigger(arg_name="evt")
def grid(evt: func.EventGridEvent) -> None:
    if evt.get_json().get("fail"):
        raise RuntimeError("boom")
    SEEN.append((evt.event_type, evt.get_json(), evt.event_time.isoformat() if evt.event_time else None))


@pytest.fixture(scope="module")
def toy_host() -> Iterator[str]:
    with ServerThread(build_app(toy, KEYS, prefix="api")) as server:
        yield server.url


def test_routes_come_from_the_declared_bindings() -> None:
    app = build_app(function_entry.app, KEYS, prefix="api")
    served = {r.name: (r.path, sorted(r.methods - {"HEAD"})) for r in app.routes
              if r.name not in ("webhook", "admin")}
    declared = {}
    for fn in indexed_functions(function_entry.app):
        (trigger,) = [b for b in json.loads(fn.get_function_json())["bindings"] if b["type"].endswith("Trigger")]
        if trigger["type"] == "httpTrigger":
            declared[fn.get_function_name()] = (f"/api/{trigger['route']}", sorted(trigger["methods"]))
    assert served == declared
    assert starlette_path("api", "files/{*path}") == "/api/files/{path:path}"
    with pytest.raises(ValueError):
        starlette_path("api", "x/{id?}")


def test_classic_function_route_params_query_and_response(toy_host: str) -> None:
    resp = httpx.post(f"{toy_host}/api/echo/alice/7?q=1", content=b"hello")
    assert resp.status_code == 201 and resp.headers["x-toy"] == "1"
    assert resp.json() == {"name": "alice", "count": "7", "q": "1", "method": "POST", "body": "hello"}
    assert httpx.get(f"{toy_host}/api/echo/alice/notanint").status_code == 404
    assert httpx.put(f"{toy_host}/api/echo/alice/7").status_code == 405
    assert httpx.get(f"{toy_host}/api/files/a/b/c.txt?code=fk1").text == "a/b/c.txt"


@pytest.mark.parametrize(("path", "key", "status"), [
    ("/api/files/x", None, 401), ("/api/files/x", "wrong", 401), ("/api/files/x", "fk2", 200),
    ("/api/files/x", "master", 200), ("/api/admin/thing", "fk1", 401), ("/api/admin/thing", "master", 200),
    ("/api/echo/a/1", None, 201),
])
def test_auth_levels(toy_host: str, path: str, key: str | None, status: int) -> None:
    as_query = httpx.get(f"{toy_host}{path}", params={"code": key} if key else None)
    as_header = httpx.get(f"{toy_host}{path}", headers={"x-functions-key": key} if key else None)
    assert as_query.status_code == status and as_header.status_code == status
    if status == 401:
        assert as_query.content == b""


def test_event_grid_webhook(toy_host: str) -> None:
    SEEN.clear()
    url = f"{toy_host}/runtime/webhooks/eventgrid"
    events = [{"id": str(i), "topic": "/t", "subject": "s", "eventType": f"T{i}", "data": {"i": i},
               "dataVersion": "1.0", "eventTime": "2026-01-02T03:04:05.1234567Z"} for i in range(3)]
    notify = {"aeg-event-type": "Notification"}
    ok = httpx.post(url, params={"functionName": "Grid", "code": "egkey"}, json=events, headers=notify)
    assert ok.status_code == 202
    expected = [(f"T{i}", {"i": i}, "2026-01-02T03:04:05.123456+00:00") for i in range(3)]
    assert expected == SEEN
    single = httpx.post(url, params={"functionName": "grid", "code": "master"}, json=events[0], headers=notify)
    assert single.status_code == 202 and len(SEEN) == 4
    assert httpx.post(url, params={"functionName": "Grid"}, json=events, headers=notify).status_code == 401
    assert httpx.post(url, params={"functionName": "Nope", "code": "egkey"}, json=events,
                      headers=notify).status_code == 404
    assert httpx.post(url, params={"functionName": "Grid", "code": "egkey"}, json=events).status_code == 400
    assert httpx.post(url, params={"functionName": "Grid", "code": "egkey"}, json=events,
                      headers={"aeg-event-type": "Unsubscribe"}).status_code == 202
    failing = [events[0], {**events[1], "data": {"fail": True}}]
    assert httpx.post(url, params={"functionName": "Grid", "code": "egkey"}, json=failing,
                      headers=notify).status_code == 500
    mixed_case = httpx.post(f"{toy_host}/runtime/webhooks/EventGrid", params={"functionName": "Grid", "code": "egkey"},
                            json=events[:1], headers=notify)
    assert mixed_case.status_code == 202


def http_entries() -> Iterator[tuple[str, str, str]]:
    """(function name, method, a path that reaches it) of every HTTP function the app indexes."""
    for fn in indexed_functions(function_entry.app):
        (trigger,) = [b for b in json.loads(fn.get_function_json())["bindings"] if b["type"].endswith("Trigger")]
        if trigger["type"] == "httpTrigger":
            yield fn.get_function_name(), trigger["methods"][0], "/api/" + trigger["route"].replace(
                "{callConnectionId}", "abc")


def test_every_http_function_but_callbacks_needs_a_key() -> None:
    app = build_app(function_entry.app, KEYS, prefix="api")
    with ServerThread(app) as server:
        for name, method, path in http_entries():
            resp = httpx.request(method, f"{server.url}{path}")
            if name == "Callbacks":
                assert resp.status_code != 401 or resp.content  # refused by the JWT check, not by the host
            elif name.startswith("RecordingsPage"):  # the page's code: no data without the key (test_functions_peaks)
                assert resp.status_code in (200, 404) and b"callConnectionId" not in resp.content, name
            else:
                assert resp.status_code == 401 and resp.content == b"", name


@pytest.mark.parametrize(("failure", "code"), [(SettingsError("ACS_ENDPOINT is required"), "ServerMisconfigured"),
                                               (RuntimeError("boom"), "InternalError")])
def test_every_http_function_is_guarded(monkeypatch: pytest.MonkeyPatch, failure: Exception, code: str) -> None:
    """`http_function` runs every HTTP entry through the guard: whatever fails answers a JSON error, no trace."""
    import function_app.web

    def broken() -> None:
        raise failure

    monkeypatch.setattr(function_app.web, "get_runtime", broken)
    app = build_app(function_entry.app, KEYS, prefix="api")
    seen = []
    with ServerThread(app) as server:
        for name, method, path in http_entries():
            resp = httpx.request(method, f"{server.url}{path}", params={"code": "master"})
            if name.startswith("RecordingsPage"):  # code, not data: it loads and its API requests show the error
                assert resp.status_code in (200, 404), (name, resp.status_code)
                continue
            assert resp.status_code == 500, (name, resp.text)
            assert resp.json()["error"]["code"] == code and "boom" not in resp.text, name
            seen.append(name)
    assert len(seen) == 9  # the page's two (code only) answer without the runtime


def test_module_runs_with_settings_from_env(azurite: Azurite) -> None:
    """`python -m devstack.functions_host --port P`: the app configures itself from the environment."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "AZURE_", "CALLBACK"))},
           "ACS_ENDPOINT": "http://127.0.0.1:9", "ACS_ACCESS_KEY": ACCESS_KEY,
           "STREAMER_WSS_URL": "ws://127.0.0.1:9/ws", "CALLBACK_URL": f"http://127.0.0.1:{port}/api/callbacks",
           "CALLBACK_AUTH": "disabled", "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "RECORDINGS_CONTAINER": "host-module-test"}
    proc = subprocess.Popen([sys.executable, "-m", "devstack.functions_host", "--port", str(port), "--key", "k1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30)
        base = f"http://127.0.0.1:{port}/api"
        assert httpx.get(f"{base}/recordings", timeout=10).status_code == 401
        listed = httpx.get(f"{base}/recordings", params={"code": "k1"}, timeout=10)
        assert listed.status_code == 200 and listed.json() == {"items": [], "nextPageToken": None}
        bad = httpx.post(f"{base}/calls", params={"code": "k1"}, json={"target": "nope"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "target"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert "CALLBACK_AUTH=disabled" in out  # said loudly at start-up


def test_misconfigured_app_answers_500_without_details(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACS_", "AZURE_", "CALLBACK", "STREAMER"))}
    proc = subprocess.Popen([sys.executable, "-m", "devstack.functions_host", "--port", str(port), "--key", "k1"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30)
        resp = httpx.get(f"http://127.0.0.1:{port}/api/recordings", params={"code": "k1"}, timeout=10)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert resp.status_code == 500
    assert resp.json() == {"error": {"code": "ServerMisconfigured",
                                     "message": "the function app is not configured; see logs"}}
    assert "ACS_ENDPOINT is required" in out
