"""Offline checks of infra/bicep: every file parses (tree-sitter-bicep and pycep), checkov passes (every skip has a
reason), and the security properties the issue asks for hold in the parsed templates.

Bicep cannot be compiled here (the bicep CLI is not installable offline), so the
helpers below evaluate just enough of pycep's tree: literals, parameter defaults, variables, `string()`, `max()`,
`min()`, `empty()`, integer arithmetic, comparisons and `c ? a : b`, and main.bicep -> module parameter passing
(with main's parameters overridden as a deployment would). Anything else (resource properties, outputs) stays a
symbolic reference such as "communication.outputs.immutableResourceId". `range_violations` does what ARM does with
@minValue/@maxValue when a deployment, a module's included, starts.

The other test_infra_*.py files import these helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tree_sitter_bicep
from pycep import BicepParser
from tree_sitter import Language, Parser

ROOT = Path(__file__).resolve().parents[1]
BICEP_DIR = ROOT / "infra" / "bicep"
MAIN = BICEP_DIR / "main.bicep"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

BICEP_FILES = sorted(BICEP_DIR.rglob("*.bicep"))

# Built-in role definition ids (roles.bicep).
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
BLOB_DELEGATOR = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
COMMUNICATION_OWNER = "09976791-48a7-449e-bb21-39d1a415f350"
BROAD_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
}


# ---------------------------------------------------------------------------------------------------------------
# Parsing and evaluation helpers
# ---------------------------------------------------------------------------------------------------------------

@cache
def _ts_parser() -> Parser:
    return Parser(Language(tree_sitter_bicep.language()))


def syntax_errors(source: bytes) -> list[str]:
    """ERROR and MISSING nodes tree-sitter-bicep finds, as 'row:col text' strings (empty = clean)."""
    found: list[str] = []
    stack = [_ts_parser().parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            found.append(f"{row + 1}:{col + 1} {node.text[:60]!r}")
        stack.extend(node.children)
    return found


@cache
def tree(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def module_path(name: str) -> Path:
    return BICEP_DIR / "modules" / f"{name}.bicep"


def ref(value: Any) -> str | None:
    """`a.b.c` for a pycep property-accessor chain, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "property_accessor":
        ops = value["operator"]["operands"]
        left, right = ref(ops["operand_1"]), ref(ops["operand_2"])
        if left is not None and right is not None:
            return f"{left}.{right}"
    return None


OPERATORS: dict[str, Any] = {
    "add": lambda a, b: a + b,
    "substract": lambda a, b: a - b,  # sic, pycep's name
    "multiply": lambda a, b: a * b,
    "greater_than": lambda a, b: a > b,
    "greater_than_or_equals": lambda a, b: a >= b,
    "less_than": lambda a, b: a < b,
    "less_than_or_equals": lambda a, b: a <= b,
    "conditional": None,
    "not": None,
}


class Scope:
    """One Bicep file plus the values its parameters receive (main.bicep passes them to modules)."""

    def __init__(self, path: Path, overrides: dict[str, Any] | None = None):
        self.path = path
        self.tree = tree(path)
        self.overrides = overrides or {}

    @property
    def params(self) -> dict[str, Any]:
        return self.tree.get("parameters", {})

    @property
    def variables(self) -> dict[str, Any]:
        return self.tree.get("variables", {})

    def resources(self, rtype: str | None = None) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.tree.get("resources", {}).items() if rtype in (None, v["type"])}

    def resource(self, rtype: str) -> dict[str, Any]:
        """The body of the one resource of this type (a conditional resource's body, condition dropped)."""
        found = self.resources(rtype)
        assert len(found) == 1, f"{self.path.name}: expected one {rtype}, found {sorted(found)}"
        config = next(iter(found.values()))["config"]
        return config["config"] if "condition" in config else config

    def param_value(self, name: str) -> Any:
        if name in self.overrides:
            return self.overrides[name]
        return self.eval(self.params[name].get("default"))

    def eval(self, value: Any) -> Any:
        """Literal value where it can be computed here, else a symbolic reference string, else None."""
        if isinstance(value, str):
            if value in self.params:
                return self.param_value(value)
            if value in self.variables:
                return self.eval(self.variables[value]["value"])
            return value
        if isinstance(value, dict):
            if "function" in value:
                return self._function(value["function"])
            if "operator" in value and value["operator"].get("type") in OPERATORS:
                return self._operator(value["operator"])
            return ref(value)
        return value

    def _function(self, fn: dict[str, Any]) -> Any:
        args = [self.eval(a) for a in fn.get("parameters", {}).values()]
        if fn["type"] == "string":
            (inner,) = args
            return None if inner is None else str(inner).lower() if isinstance(inner, bool) else str(inner)
        if fn["type"] in ("max", "min") and args and all(isinstance(a, int) for a in args):
            return max(args) if fn["type"] == "max" else min(args)
        if fn["type"] == "empty" and len(args) == 1 and isinstance(args[0], (str, list, dict)):
            return len(args[0]) == 0
        return None

    def _operator(self, op: dict[str, Any]) -> Any:
        """Integer arithmetic, comparisons, `!` and `c ? a : b` over computable operands, else None. pycep's grammar
        does not follow Bicep's precedence (`2 * a + 1` parses as `2 * (a + 1)`): the templates parenthesise."""
        operands = op["operands"]
        if op["type"] == "conditional":
            condition = self.eval(operands["condition"])
            if not isinstance(condition, bool):
                return None
            return self.eval(operands["true_value"] if condition else operands["false_value"])
        values = [self.eval(v) for v in operands.values()] if isinstance(operands, dict) else [self.eval(operands)]
        if op["type"] == "not":
            return (not values[0]) if isinstance(values[0], bool) else None
        if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
        return OPERATORS[op["type"]](*values)


@cache
def main_scope() -> Scope:
    return Scope(MAIN)


def module_decl(symbol: str) -> dict[str, Any]:
    """The `module <symbol> ...` declaration in main.bicep: {'path', 'condition', 'params'}."""
    decl = main_scope().tree["modules"][symbol]
    config = decl["config"]
    condition = None
    if "condition" in config:  # `= if (cond) { ... }`
        condition, config = config["condition"], config["config"]
    return {"path": BICEP_DIR / decl["detail"]["path"], "condition": condition, "params": config["params"]}


def module_scope(symbol: str, main_overrides: dict[str, Any] | None = None) -> Scope:
    """A module evaluated with the parameter values main.bicep passes it (resolved in main's scope, with main's own
    parameters set to `main_overrides` where given, as a deployment's parameters would)."""
    decl = module_decl(symbol)
    main = Scope(MAIN, main_overrides) if main_overrides else main_scope()
    return Scope(decl["path"], {name: main.eval(v) for name, v in decl["params"].items()})


def module_bounds_check(symbol: str, overrides: dict[str, Any], guard: str, stops: bool) -> Scope:
    """`overrides` pass main.bicep's own bounds; the module `symbol` refuses them (only `guard` out of range) when
    `stops`, else accepts them. -> the module's scope, to check what it then deploys."""
    assert range_violations(Scope(MAIN, overrides)) == {}  # main's own bounds allow each of these
    scope = module_scope(symbol, overrides)
    problems = range_violations(scope)
    assert (set(problems) == {guard}) if stops else (problems == {}), problems
    return scope


def range_violations(scope: Scope) -> dict[str, str]:
    """What ARM refuses when a deployment (a module's included) starts: each integer parameter whose value breaks
    its @minValue or @maxValue. Values that cannot be computed here are not checked."""
    out: dict[str, str] = {}
    for name, param in scope.params.items():
        value = scope.param_value(name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        for decorator in param.get("decorators", []):
            bound = decorator.get("argument")
            if decorator["type"] == "min_value" and value < bound:
                out[name] = f"{value} < @minValue({bound})"
            elif decorator["type"] == "max_value" and value > bound:
                out[name] = f"{value} > @maxValue({bound})"
    return out


def role_id(definition: Any) -> str | None:
    """The role GUID in subscriptionResourceId('Microsoft.Authorization/roleDefinitions', <id>)."""
    fn = definition.get("function", {}) if isinstance(definition, dict) else {}
    if fn.get("type") != "subscription_resource_id":
        return None
    return roles_scope().eval(fn["parameters"]["resource_name_1"])


@cache
def roles_scope() -> Scope:
    return module_scope("roles")


# ---------------------------------------------------------------------------------------------------------------
# Every .bicep parses
# ---------------------------------------------------------------------------------------------------------------

def test_bicep_files_exist():
    names = {p.relative_to(BICEP_DIR).as_posix() for p in BICEP_FILES}
    assert "main.bicep" in names
    assert len(names) >= 8, names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(BICEP_DIR).as_posix())
def test_tree_sitter_parses_without_errors(path: Path):
    assert syntax_errors(path.read_bytes()) == []


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(BICEP_DIR).as_posix())
def test_pycep_parses(path: Path):
    parsed = tree(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path.name}: no resources or modules"


def test_parsers_reject_broken_bicep(tmp_path: Path):
    # Negative control: the two checks above can fail.
    broken = b"param a string\nresource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: a\n  oops {\n}\n"
    assert syntax_errors(broken)
    (tmp_path / "broken.bicep").write_bytes(broken)
    with pytest.raises(Exception):  # noqa: B017 - lark raises several error types
        BicepParser().parse(file_path=tmp_path / "broken.bicep")


def test_every_module_is_used_and_exists():
    used = {module_decl(symbol)["path"] for symbol in main_scope().tree["modules"]}
    for path in used:
        assert path.is_file(), path
    assert used == set((BICEP_DIR / "modules").glob("*.bicep")), "a module file is not referenced by main.bicep"


def test_module_parameters_are_declared():
    for symbol in main_scope().tree["modules"]:
        decl = module_decl(symbol)
        declared = tree(decl["path"])["parameters"]
        passed = set(decl["params"])
        assert passed <= set(declared), f"{symbol}: unknown params {passed - set(declared)}"
        required = {n for n, p in declared.items() if p.get("default") is None}
        assert required <= passed, f"{symbol}: missing required params {required - passed}"


def test_default_deployment_passes_every_parameter_range():
    # main.bicep's defaults (what `azd up` uses), and what main passes each module.
    assert range_violations(main_scope()) == {}
    for symbol in main_scope().tree["modules"]:
        assert range_violations(module_scope(symbol)) == {}, symbol
    # Negative control: out-of-range values are caught, in main and in what it passes a module.
    assert range_violations(Scope(MAIN, {"streamerMinReplicas": 0})) == {"streamerMinReplicas": "0 < @minValue(1)"}
    assert range_violations(module_scope("streamer", {"streamerCpuScaleThreshold": 95})) == \
        {"cpuScaleThreshold": "95 > @maxValue(90)"}


def test_parameters_file_matches_main():
    params = json.loads((BICEP_DIR / "main.parameters.json").read_text())["parameters"]
    declared = main_scope().params
    assert set(params) <= set(declared), set(params) - set(declared)
    required = {n for n, p in declared.items() if p.get("default") is None}
    assert required <= set(params), f"main.bicep params without default missing from parameters file: {required}"


# ---------------------------------------------------------------------------------------------------------------
# checkov
# ---------------------------------------------------------------------------------------------------------------

@cache
def checkov_report() -> dict[str, Any]:
    assert CHECKOV.is_file(), f"{CHECKOV} missing: run scripts/bootstrap.sh"
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(BICEP_DIR), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_COLORS": "true"},
    )
    assert proc.stdout.strip(), f"checkov printed nothing (rc={proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one entry per framework
        (report,) = [r for r in report if r.get("check_type") == "bicep"]
    return report


def test_checkov_parses_every_file():
    # checkov exits 0 on a file it cannot parse; only the summary tells.
    summary = checkov_report()["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 0, summary


def test_checkov_has_no_failed_checks():
    failed = checkov_report()["results"].get("failed_checks", [])
    assert not failed, "\n".join(
        f"{c['check_id']} {c['check_name']} @ {c['file_path']}:{c['resource']}" for c in failed
    )


def test_every_checkov_skip_has_a_reason():
    report = checkov_report()
    skipped = report["results"].get("skipped_checks", [])
    assert len(skipped) == report["summary"]["skipped"], "the JSON report must list every skipped check"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"{check['check_id']} in {check['file_path']} needs a one-line reason"


# ---------------------------------------------------------------------------------------------------------------
# Security properties
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("symbol", ["recordingsStorage", "hostStorage"])
def test_storage_is_locked_down(symbol: str):
    scope = module_scope(symbol)
    props = scope.resource("Microsoft.Storage/storageAccounts")["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["defaultToOAuthAuthentication"] is True
    container = scope.resource("Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["properties"]["publicAccess"] == "None"


def lifecycle_days(scope: Scope) -> tuple[Any, Any]:
    """(tierToCool, delete) daysAfterModificationGreaterThan of the recordings lifecycle rule."""
    policy = scope.resource("Microsoft.Storage/storageAccounts/managementPolicies")
    (rule,) = policy["properties"]["policy"]["rules"]
    actions = rule["definition"]["actions"]["baseBlob"]
    return (scope.eval(actions["tierToCool"]["daysAfterModificationGreaterThan"]),
            scope.eval(actions["delete"]["daysAfterModificationGreaterThan"]))


def test_recordings_lifecycle_cools_then_deletes():
    scope = module_scope("recordingsStorage")
    assert scope.param_value("lifecycleContainer") == main_scope().param_value("recordingsContainer")
    cool, delete = lifecycle_days(scope)
    assert isinstance(cool, int) and isinstance(delete, int)
    assert 0 < cool < delete, (cool, delete)
    # The rule says what main.bicep's parameters say.
    main = main_scope()
    assert cool == main.param_value("recordingsCoolAfterDays")
    assert delete == main.param_value("recordingsDeleteAfterDays")


@pytest.mark.parametrize(("cool", "delete", "stops"), [(30, 365, False), (30, 31, False), (30, 30, True),
                                                        (30, 7, True), (1, 2, False)])
def test_delete_not_after_cool_stops_the_deployment(cool: int, delete: int, stops: bool):
    overrides = {"recordingsCoolAfterDays": cool, "recordingsDeleteAfterDays": delete}
    scope = module_bounds_check("recordingsStorage", overrides, "deleteDaysAfterCool", stops)
    if not stops:
        assert lifecycle_days(scope) == (cool, delete)


def test_function_app_hardening():
    scope = module_scope("functions")
    site = scope.resource("Microsoft.Web/sites")
    props = site["properties"]
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"
    assert props["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert site["identity"]["type"] == "UserAssigned"
    assert props["functionAppConfig"]["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    plan = scope.resource("Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    for policy in scope.resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies").values():
        assert policy["config"]["properties"]["allow"] is False


def test_streamer_identity_and_ingress():
    app = module_scope("streamer").resource("Microsoft.App/containerApps")
    assert app["identity"]["type"] == "UserAssigned"
    ingress = app["properties"]["configuration"]["ingress"]
    assert ingress["external"] is True
    assert ingress["allowInsecure"] is False
    assert ingress["transport"] in ("http", "auto")  # WebSocket upgrade over HTTP/1.1
    (registry,) = app["properties"]["configuration"]["registries"]
    assert registry["identity"] == "identityId" and "passwordSecretRef" not in registry


# The writable properties of Microsoft.ContainerRegistry/registries' RegistryProperties, per GA API version, as
# Azure's published type definitions list them (Azure/bicep-types-az, generated/containerregistry*/.../types.md).
# A property its version does not define is a BCP037 warning, and ARM drops it.
REGISTRY_PROPERTIES = {
    "2023-07-01": {"adminUserEnabled", "dataEndpointEnabled", "encryption", "networkRuleBypassOptions",
                   "networkRuleSet", "policies", "publicNetworkAccess", "zoneRedundancy"},
}
REGISTRY_PROPERTIES["2025-04-01"] = REGISTRY_PROPERTIES["2023-07-01"] | {"anonymousPullEnabled"}


def test_registry_has_no_admin_user_and_no_anonymous_pull():
    scope = module_scope("registry")
    props = scope.resource("Microsoft.ContainerRegistry/registries")["properties"]
    assert props["adminUserEnabled"] is False
    assert props["anonymousPullEnabled"] is False


def test_registry_properties_exist_in_its_api_version():
    # anonymousPullEnabled was set on registries@2023-07-01, which does not define it (a BCP037 warning).
    for path in BICEP_FILES:
        for symbol, res in tree(path).get("resources", {}).items():
            if res["type"] != "Microsoft.ContainerRegistry/registries":
                continue
            version = res["api_version"]
            assert version in REGISTRY_PROPERTIES, f"{path.name}:{symbol}: registries@{version} not checked here"
            config = res["config"]
            unknown = set(config.get("properties", {})) - REGISTRY_PROPERTIES[version]
            assert not unknown, f"{path.name}:{symbol}: registries@{version} has no {sorted(unknown)}"
    assert "anonymousPullEnabled" not in REGISTRY_PROPERTIES["2023-07-01"]  # the version this test moved away from


def _assignments() -> dict[str, tuple[str, str | None, str]]:
    """symbol -> (principal param, role id, scope symbol)"""
    out = {}
    for symbol, res in roles_scope().resources("Microsoft.Authorization/roleAssignments").items():
        cfg = res["config"]
        out[symbol] = (cfg["properties"]["principalId"], role_id(cfg["properties"]["roleDefinitionId"]),
                       cfg.get("scope"))
    return out


def test_role_assignments_are_least_privilege():
    roles = roles_scope()
    scopes = {s: r["type"] for s, r in roles.resources().items()}
    got = {(p, r, scopes.get(s)) for p, r, s in _assignments().values()}
    container = "Microsoft.Storage/storageAccounts/blobServices/containers"
    account = "Microsoft.Storage/storageAccounts"
    assert got == {
        ("streamerPrincipalId", BLOB_DATA_CONTRIBUTOR, container),
        ("streamerPrincipalId", ACR_PULL, "Microsoft.ContainerRegistry/registries"),
        ("functionsPrincipalId", BLOB_DATA_CONTRIBUTOR, container),
        ("functionsPrincipalId", BLOB_DELEGATOR, account),
        ("functionsPrincipalId", BLOB_DATA_OWNER, account),
        ("functionsPrincipalId", COMMUNICATION_OWNER, "Microsoft.Communication/communicationServices"),
    }, got
    # The container scope is the recordings container; the owner role is on the host account, not recordings.
    by_symbol = _assignments()
    sym_of = {(p, r): s for p, r, s in by_symbol.values()}
    assert roles.resources()[sym_of[("functionsPrincipalId", BLOB_DATA_OWNER)]]["config"]["name"] == \
        "hostStorageAccountName"
    assert roles.resources()[sym_of[("functionsPrincipalId", BLOB_DELEGATOR)]]["config"]["name"] == \
        "recordingsStorageAccountName"
    assert not set(BROAD_ROLES) & {r for _, r, _ in by_symbol.values()}


def test_roles_go_to_the_apps_identities():
    params = module_decl("roles")["params"]
    assert ref(params["streamerPrincipalId"]) == "identities.outputs.streamerPrincipalId"
    assert ref(params["functionsPrincipalId"]) == "identities.outputs.functionsPrincipalId"
    assert ref(params["recordingsStorageAccountName"]) == "recordingsStorage.outputs.name"
    assert ref(params["hostStorageAccountName"]) == "hostStorage.outputs.name"


def test_acs_immutable_resource_id_reaches_both_apps():
    for symbol in ("streamer", "functions"):
        assert ref(module_decl(symbol)["params"]["acsResourceId"]) == "communication.outputs.immutableResourceId"
    acs = module_scope("communication").tree["outputs"]["immutableResourceId"]["value"]
    assert ref(acs) == "acs.properties.immutableResourceId"


def test_main_outputs_have_no_secrets():
    outputs = main_scope().tree["outputs"]
    for name in ("FUNCTION_BASE_URL", "STREAMER_WSS_URL", "RECORDINGS_STORAGE_ACCOUNT_URL"):
        assert name in outputs
    assert outputs["STREAMER_WSS_URL"]["value"] == "wss://${streamer.outputs.fqdn}/ws"
    banned = ("key", "connectionstring", "secret", "password", "sas", "token")
    for name, out in outputs.items():
        text = (name + json.dumps(out["value"], default=str)).lower()
        assert not any(b in text for b in banned), f"output {name} looks like a secret: {out['value']}"
        assert not out.get("decorators"), f"output {name}: @secure outputs are still outputs"
    for path in BICEP_FILES:
        for name, out in tree(path).get("outputs", {}).items():
            text = json.dumps(out["value"], default=str)
            assert "list_keys" not in text and "listKeys" not in text, f"{path.name} output {name} leaks keys"


def test_incoming_call_subscription_targets_the_function():
    decl = module_decl("incomingCall")
    assert decl["condition"] == "deployIncomingCallSubscription"
    assert main_scope().param_value("deployIncomingCallSubscription") is False  # only after code is published
    scope = module_scope("incomingCall")
    sub = scope.resource("Microsoft.EventGrid/systemTopics/eventSubscriptions")["properties"]
    assert sub["filter"]["includedEventTypes"] == ["Microsoft.Communication.IncomingCall"]
    assert sub["destination"]["endpointType"] == "AzureFunction"
    assert sub["destination"]["properties"]["resourceId"] == "${functionApp.id}/functions/${functionName}"
    assert sub["eventDeliverySchema"] == "EventGridSchema"
    topic = module_scope("eventGrid").resource("Microsoft.EventGrid/systemTopics")
    assert topic["properties"]["topicType"] == "Microsoft.Communication.CommunicationServices"


def test_audio_at_risk_alert_matches_what_the_streamer_logs():
    """The alert's query must match the streamer's real log lines (a quarantined chunk, a spool failure), on the
    streamer's Container App — or it would never fire."""
    import json
    import logging
    import re

    from common.logs import JsonFormatter

    alerts = module_scope("alerts")
    rule = alerts.resource("Microsoft.Insights/scheduledQueryRules")["properties"]
    query = rule["criteria"]["allOf"][0]["query"].replace("\\\\", "\\")  # Bicep's escape of a backslash
    terms = [json.loads(f'"{t}"') for t in re.findall(r'has "((?:[^"\\]|\\.)*)"', query)]
    assert len(terms) == 2, query
    assert alerts.param_value("streamerAppName") == module_decl("streamer")["params"]["appName"] == \
        "ca-streamer-${token}"
    assert 'ContainerAppName_s == "${streamerAppName}"' in query

    def line(level: int, msg: str) -> str:
        return JsonFormatter().format(logging.makeLogRecord({"levelno": level, "levelname": logging.getLevelName(level),
                                                             "name": "streamer.sink", "msg": msg}))

    quarantined = line(logging.ERROR, "chunk quarantined: it can never land as it is; kept for an operator")
    spool_failed = line(logging.CRITICAL, "cannot spool chunk; keeping it in memory — audio at risk")
    routine = line(logging.WARNING, "chunk upload failed; will retry")
    assert any(t in quarantined for t in terms) and any(t in spool_failed for t in terms)
    assert not any(t in routine for t in terms)
    # the messages the streamer really writes
    sink_source = (ROOT / "streamer" / "sink.py").read_text()
    assert '"chunk quarantined: it can never land as it is; kept for an operator"' in sink_source
    assert "log.critical(" in sink_source
