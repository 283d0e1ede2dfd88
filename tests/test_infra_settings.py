"""Cross-check, both ways, the settings the code reads and the app settings the Bicep sets, for both apps:

    code ENV_VARS - LOCAL_ONLY  is a subset of  Bicep settings            (nothing the code needs is left unset)
    Bicep settings              is a subset of  ENV_VARS + PLATFORM_*     (nothing set that no one reads)
    Bicep settings and LOCAL_ONLY are disjoint                            (no local-only switch reaches Azure)

ENV_VARS / LOCAL_ONLY / FIXED_VALUES are read off each plane's declaration (`DECLARED`: streamer/settings.py,
function_app/settings.py, the shared ACS-auth and storage settings from common/settings.py), whatever it says today.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

from common.settings import Setting
from tests.test_infra_bicep import ROOT, Scope, body, main_scope, module_scope

# Settings the Bicep may set although our code never reads them: each is read by the platform.
PLATFORM_FUNCTIONS: dict[str, str] = {
    # Identity-based AzureWebJobsStorage for the Functions host (no connection string, no account key).
    "AzureWebJobsStorage__accountName": "Functions host: storage account for keys, leases and host state",
    "AzureWebJobsStorage__credential": "Functions host: 'managedidentity'",
    "AzureWebJobsStorage__clientId": "Functions host: which user-assigned identity to use for that storage",
    # Read by the Functions host to send logs, requests and dependencies to Application Insights.
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Functions host: Application Insights",
}
PLATFORM_STREAMER: dict[str, str] = {}  # the streamer reads everything itself (APPLICATIONINSIGHTS_* included)

# App settings Flex Consumption rejects or ignores (runtime and deployment live in functionAppConfig).
FLEX_DEPRECATED = {
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTSHARE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD", "WEBSITE_NODE_DEFAULT_VERSION",
    "AzureWebJobsStorage",  # the key-based connection string form
}


def settings_mismatch(env_vars: dict[str, str], local_only: frozenset[str], bicep: set[str],
                      platform: dict[str, str]) -> dict[str, set[str]]:
    return {
        "read by code, not set by Bicep": set(env_vars) - set(local_only) - bicep,
        "set by Bicep, read by no one": bicep - set(env_vars) - set(platform),
        "local-only, but set by Bicep": bicep & set(local_only),
    }


def code_settings(module: str) -> tuple[dict[str, str], frozenset[str], Any]:
    mod = importlib.import_module(module)
    declared: tuple[Setting[Any], ...] = mod.DECLARED
    assert declared and all(isinstance(s, Setting) for s in declared), f"{module}.DECLARED"
    names = [s.env for s in declared]
    assert len(names) == len(set(names)), f"{module} declares a setting twice: {names}"
    env_vars = {s.env: s.doc for s in declared}
    local_only = frozenset(s.env for s in declared if s.local_only)
    # The module's views are the declaration's, for the callers that read them.
    assert (env_vars, local_only) == (mod.ENV_VARS, mod.LOCAL_ONLY), module
    assert getattr(mod, "FIXED_VALUES", {}) == {s.env: s.fixed for s in declared if s.fixed is not None}, module
    return env_vars, local_only, mod


def streamer_env() -> dict[str, Any]:
    """name -> value (or {'secretRef': ...}) of the streamer container's environment, as main.bicep deploys it."""
    scope = module_scope("streamer")
    (container,) = scope.resource("Microsoft.App/containerApps")["properties"]["template"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: scope.eval(e["value"]) if "value" in e else {"secretRef": e["secretRef"]}
            for e in container["env"]}


def function_settings() -> tuple[Scope, dict[str, Any]]:
    scope = module_scope("functions")
    (app_settings,) = [body(r) for r in scope.resources("Microsoft.Web/sites/config").values()
                       if body(r).get("name") == "appsettings"]
    return scope, app_settings["properties"]


def test_mismatch_helper_detects_both_directions():
    # Negative control: the checks below can fail.
    got = settings_mismatch({"A": "", "B": "", "L": ""}, frozenset({"L"}), {"A", "X", "L"}, {"P": ""})
    assert got == {"read by code, not set by Bicep": {"B"}, "set by Bicep, read by no one": {"X"},
                   "local-only, but set by Bicep": {"L"}}


def test_streamer_settings_match_bicep():
    env_vars, local_only, _ = code_settings("streamer.settings")
    problems = settings_mismatch(env_vars, local_only, set(streamer_env()), PLATFORM_STREAMER)
    assert not any(problems.values()), problems


def test_function_settings_match_bicep():
    env_vars, local_only, _ = code_settings("function_app.settings")
    _, props = function_settings()
    problems = settings_mismatch(env_vars, local_only, set(props), PLATFORM_FUNCTIONS)
    assert not any(problems.values()), problems


def test_function_fixed_values():
    _, _, mod = code_settings("function_app.settings")
    fixed = {s.env: s.fixed for s in mod.DECLARED if s.fixed is not None}
    assert fixed, "the worker's settings are declared with their fixed values"
    scope, props = function_settings()
    for name, value in fixed.items():
        assert scope.eval(props[name]) == value, f"{name}: Bicep {scope.eval(props[name])!r}, code wants {value!r}"
    script = scope.eval(props["PYTHON_SCRIPT_FILE_NAME"])
    assert (ROOT / script).is_file(), f"PYTHON_SCRIPT_FILE_NAME={script} does not exist at the repo root"
    if hasattr(mod, "ENTRY_SCRIPT"):
        assert script == mod.ENTRY_SCRIPT


def test_function_app_uses_identity_based_host_storage():
    scope, props = function_settings()
    assert not FLEX_DEPRECATED & set(props), FLEX_DEPRECATED & set(props)
    assert props["AzureWebJobsStorage__credential"] == "managedidentity"
    assert scope.eval(props["AzureWebJobsStorage__clientId"]) == "identities.outputs.functionsClientId"
    assert scope.eval(props["AZURE_CLIENT_ID"]) == "identities.outputs.functionsClientId"
    assert props["CALLBACK_URL"] == "https://${site.properties.defaultHostName}/api/callbacks"
    assert scope.eval(props["STREAMER_WSS_URL"]) == "wss://${streamer.outputs.fqdn}/ws"
    assert scope.eval(props["ACS_ENDPOINT"]) == "communication.outputs.endpoint"
    assert scope.eval(props["AZURE_STORAGE_ACCOUNT_URL"]) == "recordingsStorage.outputs.blobEndpoint"


def test_function_app_finalize_trigger_and_events_use_the_identity():
    from function_app.settings import QUEUE_CONNECTION

    scope, props = function_settings()
    queue = "recordingsStorage.outputs.queueEndpoint"
    # The queue trigger's identity-based connection: queue endpoint, managed identity, the app's user-assigned one.
    assert scope.eval(props[f"{QUEUE_CONNECTION}__queueServiceUri"]) == queue
    assert props[f"{QUEUE_CONNECTION}__credential"] == "managedidentity"
    assert scope.eval(props[f"{QUEUE_CONNECTION}__clientId"]) == "identities.outputs.functionsClientId"
    assert QUEUE_CONNECTION not in props  # the connection-string form is local only
    # Our code's queue client talks to the same endpoint; events go to the topic, with no key in Azure.
    assert scope.eval(props["AZURE_STORAGE_QUEUE_URL"]) == queue
    assert scope.eval(props["RECORDING_EVENTS_ENDPOINT"]) == "recordingEvents.outputs.endpoint"
    assert "RECORDING_EVENTS_KEY" not in props
    assert not any("key" in name.lower() for name in props if name.startswith(("RECORDING_EVENTS", QUEUE_CONNECTION)))


def literal_values(values: dict[str, Any], samples: dict[str, str]) -> dict[str, str]:
    """The values Bicep fixes at deploy time, with samples for those only Azure knows (outputs, host names)."""
    out = {k: v for k, v in values.items() if isinstance(v, str) and ".outputs." not in v and "${" not in v}
    return {**out, **samples}


AZURE_ONLY_SAMPLES = {
    "ACS_RESOURCE_ID": "00000000-0000-0000-0000-000000000000",
    "ACS_ENDPOINT": "https://acs-x.unitedstates.communication.azure.com/",
    "AZURE_STORAGE_ACCOUNT_URL": "https://strecx.blob.core.windows.net/",
    "AZURE_STORAGE_QUEUE_URL": "https://strecx.queue.core.windows.net/",
    "RECORDING_EVENTS_ENDPOINT": "https://evgt-rec-x.eastus-1.eventgrid.azure.net/api/events",
    "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "STREAMER_WSS_URL": "wss://ca-streamer-x.example.azurecontainerapps.io/ws",
    "CALLBACK_URL": "https://func-x.azurewebsites.net/api/callbacks",
}


def test_streamer_env_values():
    from streamer.settings import Settings

    env = streamer_env()
    assert env["AZURE_CLIENT_ID"] == "identities.outputs.streamerClientId"
    assert env["AZURE_STORAGE_ACCOUNT_URL"] == "recordingsStorage.outputs.blobEndpoint"
    assert env["AZURE_STORAGE_QUEUE_URL"] == "recordingsStorage.outputs.queueEndpoint"
    assert env["RECORDINGS_CONTAINER"] == main_scope().param_value("recordingsContainer")
    assert env["APPLICATIONINSIGHTS_CONNECTION_STRING"] == {"secretRef": "appinsights-connection-string"}
    # The values the Bicep sets must be ones the streamer's own parser accepts, with auth on.
    parsed = Settings.from_env(literal_values(env, AZURE_ONLY_SAMPLES))
    assert parsed.auth_enabled
    assert parsed.queue_account_url() == AZURE_ONLY_SAMPLES["AZURE_STORAGE_QUEUE_URL"]
    assert parsed.max_active_calls == main_scope().param_value("streamerMaxActiveCalls")
    assert parsed.shutdown_grace_seconds == main_scope().param_value("streamerShutdownGraceSeconds")


def test_function_setting_values_are_valid():
    from function_app.settings import Settings

    scope, props = function_settings()
    values = {k: scope.eval(v) for k, v in props.items()}
    parsed = Settings.from_env(literal_values(values, AZURE_ONLY_SAMPLES))
    assert parsed.callback_auth
    assert parsed.acs_access_key is None and parsed.storage_connection_string is None
    assert parsed.events_key is None and parsed.events_endpoint == AZURE_ONLY_SAMPLES["RECORDING_EVENTS_ENDPOINT"]
    assert parsed.queue_account_url() == AZURE_ONLY_SAMPLES["AZURE_STORAGE_QUEUE_URL"]


def test_jwt_issuer_and_jwks_match_code_defaults():
    from common.acs_jwt import DEFAULT_ISSUER, DEFAULT_JWKS_URL

    main = main_scope()
    assert main.eval("acsJwtIssuer") == DEFAULT_ISSUER
    assert main.eval("acsJwksUrl") == DEFAULT_JWKS_URL
    assert streamer_env()["ACS_JWT_ISSUER"] == DEFAULT_ISSUER
    scope, props = function_settings()
    assert scope.eval(props["ACS_JWKS_URL"]) == DEFAULT_JWKS_URL


@pytest.fixture(scope="module")
def function_triggers() -> dict[str, list[str]]:
    # In a subprocess: FunctionApp.get_functions() may run only once per app object, and other tests index it too.
    _, _, mod = code_settings("function_app.settings")
    entry = getattr(mod, "ENTRY_SCRIPT", "function_app.py").removesuffix(".py")
    code = (f"import json, {entry} as m\n"
            "print(json.dumps({f.get_function_name(): [b['type'] for b in json.loads(f.get_function_json())"
            "['bindings']] for f in m.app.get_functions()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_incoming_call_function_exists(function_triggers: dict[str, list[str]]):
    name = main_scope().param_value("incomingCallFunctionName")
    assert "eventGridTrigger" in function_triggers.get(name, []), function_triggers
    hook = (ROOT / "infra" / "hooks" / "postdeploy.sh").read_text()
    assert "INCOMING_CALL_FUNCTION_NAME" in hook and "incoming-call-subscription.bicep" in hook
    assert main_scope().tree["outputs"]["INCOMING_CALL_FUNCTION_NAME"]["value"] == "incomingCallFunctionName"


def test_callback_route_exists(function_triggers: dict[str, list[str]]):
    assert any("httpTrigger" in b for b in function_triggers.values())
    app_py = "\n".join(p.read_text() for p in (ROOT / "function_app").glob("*.py"))
    assert 'route="callbacks"' in app_py, "CALLBACK_URL points at /api/callbacks"
