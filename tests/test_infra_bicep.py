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
import re
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
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
QUEUE_MESSAGE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
EVENTGRID_DATA_SENDER = "d5a91429-5739-47e2-a06b-3470a27159e7"
# The one custom role (roles.bicep): role_id() names it "custom:<symbol>".
CHUNK_TAG_WRITER = "custom:chunkTagWriter"
BLOB_TAGS_WRITE = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/write"
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
        """The body of the one resource of this type (a conditional or loop resource's body, condition dropped)."""
        found = self.resources(rtype)
        assert len(found) == 1, f"{self.path.name}: expected one {rtype}, found {sorted(found)}"
        return body(next(iter(found.values())))

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


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A pycep resource's body: `= if (c) {...}` and `= [for x in xs: {...}]` unwrapped."""
    config = resource["config"]
    return config["config"] if "condition" in config or "loop_type" in config else config


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
    """The role GUID in subscriptionResourceId('Microsoft.Authorization/roleDefinitions', <id>), or "custom:<symbol>"
    when <id> is `<symbol>.name` of a role definition that roles.bicep itself declares."""
    fn = definition.get("function", {}) if isinstance(definition, dict) else {}
    if fn.get("type") != "subscription_resource_id":
        return None
    assert fn["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", fn
    value = roles_scope().eval(fn["parameters"]["resource_name_1"])
    custom = roles_scope().resources("Microsoft.Authorization/roleDefinitions")
    if isinstance(value, str) and value.endswith(".name") and value.removesuffix(".name") in custom:
        return f"custom:{value.removesuffix('.name')}"
    return value


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


def lifecycle_rules(scope: Scope) -> dict[str, dict[str, Any]]:
    """name -> rule of the lifecycle policy."""
    policy = scope.resource("Microsoft.Storage/storageAccounts/managementPolicies")
    rules = policy["properties"]["policy"]["rules"]
    assert len({r["name"] for r in rules}) == len(rules), "rule names must be unique in a policy"
    return {r["name"]: r for r in rules}


def lifecycle_days(scope: Scope) -> tuple[Any, Any]:
    """(tierToCool, delete) daysAfterModificationGreaterThan of the recordings lifecycle rule."""
    rule = lifecycle_rules(scope)["recordings-cool-then-delete"]
    assert "blobIndexMatch" not in rule["definition"]["filters"], "the cool/delete rule covers every blob"
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


def chunk_rule(scope: Scope) -> dict[str, Any]:
    return lifecycle_rules(scope)["recordings-chunks-expire"]["definition"]


def test_chunk_lifecycle_rule_deletes_tagged_chunks_only():
    scope = module_scope("recordingsStorage")
    rule = chunk_rule(scope)
    filters = rule["filters"]
    assert filters["blobTypes"] == ["blockBlob"]
    # The recordings container only (the same prefix as the cool/delete rule), and only blobs tagged as chunks.
    cool_rule = lifecycle_rules(scope)["recordings-cool-then-delete"]["definition"]
    assert filters["prefixMatch"] == cool_rule["filters"]["prefixMatch"] == ["${lifecycleContainer}/"]
    assert scope.param_value("lifecycleContainer") == main_scope().param_value("recordingsContainer")
    tags = [{k: scope.eval(v) for k, v in f.items()} for f in filters["blobIndexMatch"]]
    assert tags == [{"name": "recorder-kind", "op": "==", "value": "chunk"}]  # lifecycle matches on == only
    # Deletion only (no tiering), counted from creation, after the days main.bicep's parameter says.
    actions = rule["actions"]
    assert set(actions) == {"baseBlob"} and set(actions["baseBlob"]) == {"delete"}
    delete = actions["baseBlob"]["delete"]
    assert set(delete) == {"daysAfterCreationGreaterThan"}
    assert ref(module_decl("recordingsStorage")["params"]["chunkRetentionDays"]) == "chunkRetentionDays"
    assert scope.eval(delete["daysAfterCreationGreaterThan"]) == main_scope().param_value("chunkRetentionDays") == 30
    # The parameter is documented and bounded, in main and in the module.
    for s in (main_scope(), scope):
        decorators = {d["type"]: d.get("argument") for d in s.params["chunkRetentionDays"]["decorators"]}
        assert decorators.get("min_value") == 1 and decorators.get("description"), s.path.name


@pytest.mark.parametrize(("days", "stops"), [(1, False), (7, False), (400, False), (0, True)])
def test_chunk_retention_parameter_reaches_the_rule(days: int, stops: bool):
    overrides = {"chunkRetentionDays": days}
    if stops:  # main's own @minValue(1) refuses it, and so would the module's
        assert range_violations(Scope(MAIN, overrides)) == {"chunkRetentionDays": "0 < @minValue(1)"}
        assert range_violations(module_scope("recordingsStorage", overrides)) == \
            {"chunkRetentionDays": "0 < @minValue(1)"}
        return
    scope = module_bounds_check("recordingsStorage", overrides, "chunkRetentionDays", stops=False)
    assert scope.eval(chunk_rule(scope)["actions"]["baseBlob"]["delete"]["daysAfterCreationGreaterThan"]) == days
    assert lifecycle_days(scope) == (30, 365)  # the other rule is unchanged


# Queue names, as Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01 constrains them
# (bicep-types-az, generated/storage/microsoft.storage/2023-05-01/types.md).
QUEUE_NAME = re.compile(r"^[a-z0-9]([a-z0-9]|(-(?!-))){1,61}[a-z0-9]$")


def test_the_queues_exist_in_the_recordings_account():
    from common.layout import FINALIZE_QUEUE, STREAMING_RESTART_QUEUE

    assert FINALIZE_QUEUE == "recording-finalize"
    main = main_scope()
    assert main.eval("finalizeQueue") == FINALIZE_QUEUE
    assert main.eval("finalizePoisonQueue") == f"{FINALIZE_QUEUE}-poison"  # the Functions queue trigger's name for it
    assert main.eval("restartQueue") == STREAMING_RESTART_QUEUE
    assert main.eval("restartPoisonQueue") == f"{STREAMING_RESTART_QUEUE}-poison"
    scope = module_scope("recordingsStorage")
    names = [main.eval(n) for n in scope.param_value("queueNames")]  # main's variables, passed as a list
    assert names == [FINALIZE_QUEUE, f"{FINALIZE_QUEUE}-poison", STREAMING_RESTART_QUEUE,
                     f"{STREAMING_RESTART_QUEUE}-poison"]
    assert all(QUEUE_NAME.match(n) and 3 <= len(n) <= 63 for n in names), names
    # One queue per name, under the account's queue service, which exists when there are queues.
    (queues,) = scope.resources("Microsoft.Storage/storageAccounts/queueServices/queues").values()
    assert queues["config"]["loop_type"]["detail"] == {"item_name": "queueName", "array_name": "queueNames"}
    assert body(queues) == {"parent": "queueService", "name": "queueName"}
    (service,) = scope.resources("Microsoft.Storage/storageAccounts/queueServices").values()
    assert scope.eval(service["config"]["condition"]) is True
    assert body(service)["name"] == "default" and body(service)["parent"] == "account"
    # The Functions host account gets none.
    host = module_scope("hostStorage")
    assert host.param_value("queueNames") == []
    (host_service,) = host.resources("Microsoft.Storage/storageAccounts/queueServices").values()
    assert host.eval(host_service["config"]["condition"]) is False
    # roles.bicep scopes its queue roles to these two queues.
    roles = roles_scope()
    assert roles.param_value("finalizeQueueName") == FINALIZE_QUEUE
    assert roles.param_value("finalizePoisonQueueName") == f"{FINALIZE_QUEUE}-poison"
    assert roles.param_value("restartQueueName") == STREAMING_RESTART_QUEUE
    assert roles.param_value("restartPoisonQueueName") == f"{STREAMING_RESTART_QUEUE}-poison"
    assert ref(module_decl("roles")["params"]["recordingsStorageAccountName"]) == "recordingsStorage.outputs.name"


def test_queue_endpoint_reaches_both_apps():
    output = module_scope("recordingsStorage").tree["outputs"]["queueEndpoint"]["value"]
    assert ref(output) == "account.properties.primaryEndpoints.queue"
    for symbol in ("streamer", "functions"):
        assert ref(module_decl(symbol)["params"]["storageQueueUrl"]) == "recordingsStorage.outputs.queueEndpoint"


def test_recording_events_topic_is_entra_only_cloudevents():
    scope = module_scope("recordingEvents")
    topic = scope.resource("Microsoft.EventGrid/topics")
    props = topic["properties"]
    assert props["inputSchema"] == "CloudEventSchemaV1_0"
    assert props["disableLocalAuth"] is True  # no keys, no SAS: Entra ID tokens only
    assert props["minimumTlsVersionAllowed"] == "1.2"
    assert "inputSchemaMapping" not in props
    assert topic["identity"] == {"type": "SystemAssigned"}  # for subscribers' identity-based delivery
    outputs = scope.tree["outputs"]
    assert ref(outputs["endpoint"]["value"]) == "topic.properties.endpoint"
    # main.bicep gives the endpoint to the function app and to azd, and the topic name to roles.bicep.
    assert ref(module_decl("functions")["params"]["recordingEventsEndpoint"]) == "recordingEvents.outputs.endpoint"
    main_outputs = main_scope().tree["outputs"]
    assert ref(main_outputs["RECORDING_EVENTS_ENDPOINT"]["value"]) == "recordingEvents.outputs.endpoint"
    assert ref(main_outputs["RECORDING_EVENTS_TOPIC_ID"]["value"]) == "recordingEvents.outputs.id"
    assert ref(module_decl("roles")["params"]["recordingEventsTopicName"]) == "recordingEvents.outputs.name"


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


# Writable properties of the other resource types this change added or extended, per API version, as
# Azure/bicep-types-az lists them (generated/<provider>/<namespace>/<version>/types.md). Keys are paths into the
# resource body ("[]" = each element of a list); each value is the set of keys that object may have there. A path
# that is absent in a template is not checked; a key outside its set is a BCP037 warning, and ARM drops or refuses it.
_DATE_AFTER_MODIFICATION = {"daysAfterCreationGreaterThan", "daysAfterLastAccessTimeGreaterThan",
                            "daysAfterLastTierChangeGreaterThan", "daysAfterModificationGreaterThan"}
_RULE = "properties.policy.rules[].definition"
RESOURCE_SCHEMAS: dict[tuple[str, str], dict[str, set[str]]] = {
    # generated/eventgrid/microsoft.eventgrid/2025-02-15: TopicProperties, IdentityInfo
    ("Microsoft.EventGrid/topics", "2025-02-15"): {
        "": {"name", "location", "tags", "identity", "properties"},
        "identity": {"principalId", "tenantId", "type", "userAssignedIdentities"},
        "properties": {"dataResidencyBoundary", "disableLocalAuth", "eventTypeInfo", "inboundIpRules", "inputSchema",
                       "inputSchemaMapping", "minimumTlsVersionAllowed", "publicNetworkAccess"},
    },
    # generated/storage/microsoft.storage/2023-05-01: QueueServicePropertiesProperties, CorsRules
    ("Microsoft.Storage/storageAccounts/queueServices", "2023-05-01"): {
        "": {"parent", "name", "properties"},
        "properties": {"cors"},
        "properties.cors": {"corsRules"},
    },
    # ... QueueProperties (approximateMessageCount is read-only)
    ("Microsoft.Storage/storageAccounts/queueServices/queues", "2023-05-01"): {
        "": {"parent", "name", "properties"},
        "properties": {"metadata"},
    },
    # ... ManagementPolicy*, TagFilter, DateAfterModification
    ("Microsoft.Storage/storageAccounts/managementPolicies", "2023-05-01"): {
        "": {"parent", "name", "properties", "dependsOn"},
        "properties": {"policy"},
        "properties.policy": {"rules"},
        "properties.policy.rules[]": {"definition", "enabled", "name", "type"},
        _RULE: {"actions", "filters"},
        f"{_RULE}.filters": {"blobIndexMatch", "blobTypes", "prefixMatch"},
        f"{_RULE}.filters.blobIndexMatch[]": {"name", "op", "value"},
        f"{_RULE}.actions": {"baseBlob", "snapshot", "version"},
        f"{_RULE}.actions.baseBlob": {"delete", "enableAutoTierToHotFromCool", "tierToArchive", "tierToCold",
                                      "tierToCool", "tierToHot"},
        **{f"{_RULE}.actions.baseBlob.{action}": _DATE_AFTER_MODIFICATION
           for action in ("delete", "tierToArchive", "tierToCold", "tierToCool", "tierToHot")},
    },
    # generated/authorization/microsoft.authorization/2022-04-01: RoleDefinitionProperties, Permission
    ("Microsoft.Authorization/roleDefinitions", "2022-04-01"): {
        "": {"name", "properties"},
        "properties": {"assignableScopes", "description", "permissions", "roleName", "type"},
        "properties.permissions[]": {"actions", "dataActions", "notActions", "notDataActions"},
    },
    # ... RoleAssignmentProperties (createdBy, scope, ... are read-only)
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"): {
        "": {"name", "scope", "properties"},
        "properties": {"condition", "conditionVersion", "delegatedManagedIdentityResourceId", "description",
                       "principalId", "principalType", "roleDefinitionId"},
    },
}


def _at(node: Any, path: str) -> list[Any]:
    """The objects at `path` ("a.b[].c") in a resource body; nothing where a step is absent."""
    nodes = [node]
    for step in [p for p in path.split(".") if p]:
        key, each = step.removesuffix("[]"), step.endswith("[]")
        nodes = [n[key] for n in nodes if isinstance(n, dict) and key in n]
        if each:
            nodes = [item for n in nodes if isinstance(n, list) for item in n]
    return nodes


def unknown_properties(res: dict[str, Any]) -> dict[str, set[str]]:
    """path -> keys its API version does not define, for one pycep resource of a type in RESOURCE_SCHEMAS."""
    schema = RESOURCE_SCHEMAS[(res["type"], res["api_version"])]
    out: dict[str, set[str]] = {}
    for path, allowed in schema.items():
        for obj in _at(body(res), path):
            if isinstance(obj, dict) and (extra := set(obj) - allowed):
                out.setdefault(path, set()).update(extra)
    return out


def test_new_resource_properties_exist_in_their_api_version():
    seen = set()
    for path in BICEP_FILES:
        for symbol, res in tree(path).get("resources", {}).items():
            types = {t for t, _ in RESOURCE_SCHEMAS}
            if res["type"] not in types or res.get("existing"):
                continue
            key = (res["type"], res["api_version"])
            assert key in RESOURCE_SCHEMAS, f"{path.name}:{symbol}: {res['type']}@{res['api_version']} not checked here"
            assert unknown_properties(res) == {}, f"{path.name}:{symbol}: {unknown_properties(res)}"
            seen.add(key)
    assert seen == set(RESOURCE_SCHEMAS), set(RESOURCE_SCHEMAS) - seen  # every entry is used
    # Negative control: a misspelt tag filter and an action the version lacks are caught.
    broken = {"type": "Microsoft.Storage/storageAccounts/managementPolicies", "api_version": "2023-05-01",
              "config": {"name": "default", "properties": {"policy": {"rules": [{"name": "r", "type": "Lifecycle",
                         "definition": {"filters": {"blobTypes": [], "blobIndexMatch": [{"key": "k", "op": "==",
                                                                                            "value": "v"}]},
                                        "actions": {"baseBlob": {"delete": {"daysAfterCreation": 1}}}}}]}}}}
    assert unknown_properties(broken) == {f"{_RULE}.filters.blobIndexMatch[]": {"key"},
                                          f"{_RULE}.actions.baseBlob.delete": {"daysAfterCreation"}}


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
    assignments = _assignments()
    got = sorted((p, r, scopes.get(s)) for p, r, s in assignments.values())
    container = "Microsoft.Storage/storageAccounts/blobServices/containers"
    account = "Microsoft.Storage/storageAccounts"
    queue = "Microsoft.Storage/storageAccounts/queueServices/queues"
    assert got == sorted([
        ("streamerPrincipalId", BLOB_DATA_CONTRIBUTOR, container),
        ("streamerPrincipalId", CHUNK_TAG_WRITER, container),
        ("streamerPrincipalId", QUEUE_MESSAGE_SENDER, queue),
        ("streamerPrincipalId", ACR_PULL, "Microsoft.ContainerRegistry/registries"),
        ("functionsPrincipalId", BLOB_DATA_CONTRIBUTOR, container),
        ("functionsPrincipalId", BLOB_DELEGATOR, account),
        ("functionsPrincipalId", BLOB_DATA_OWNER, account),
        ("functionsPrincipalId", QUEUE_DATA_CONTRIBUTOR, queue),  # recording-finalize
        ("functionsPrincipalId", QUEUE_DATA_CONTRIBUTOR, queue),  # recording-finalize-poison
        ("functionsPrincipalId", QUEUE_DATA_CONTRIBUTOR, queue),  # streaming-restart
        ("functionsPrincipalId", QUEUE_DATA_CONTRIBUTOR, queue),  # streaming-restart-poison
        ("functionsPrincipalId", EVENTGRID_DATA_SENDER, "Microsoft.EventGrid/topics"),
        ("functionsPrincipalId", COMMUNICATION_OWNER, "Microsoft.Communication/communicationServices"),
    ]), got
    # Which resource each scope is: the owner role is on the host account, not recordings; the queue roles are on the
    # finalization queues (not the account); the data sender on the recording-events topic.
    def scope_names(principal: str, role: str) -> list[Any]:
        return sorted(str(roles.resources()[s]["config"]["name"]) for p, r, s in assignments.values()
                      if (p, r) == (principal, role))

    assert scope_names("functionsPrincipalId", BLOB_DATA_OWNER) == ["hostStorageAccountName"]
    assert scope_names("functionsPrincipalId", BLOB_DELEGATOR) == ["recordingsStorageAccountName"]
    assert scope_names("functionsPrincipalId", QUEUE_DATA_CONTRIBUTOR) == \
        ["finalizePoisonQueueName", "finalizeQueueName", "restartPoisonQueueName", "restartQueueName"]
    assert scope_names("streamerPrincipalId", QUEUE_MESSAGE_SENDER) == ["finalizeQueueName"]
    assert scope_names("functionsPrincipalId", EVENTGRID_DATA_SENDER) == ["recordingEventsTopicName"]
    for principal in ("streamerPrincipalId", "functionsPrincipalId"):
        assert scope_names(principal, BLOB_DATA_CONTRIBUTOR) == ["recordingsContainer"]
    assert scope_names("streamerPrincipalId", CHUNK_TAG_WRITER) == ["recordingsContainer"]
    assert not set(BROAD_ROLES) & {r for _, r, _ in assignments.values()}
    # Every assignment's name is unique (a guid of its scope, principal and role).
    names = [json.dumps(roles.resources()[s]["config"]["name"], sort_keys=True) for s in assignments]
    assert len(set(names)) == len(names)


def test_chunk_tag_writer_custom_role_sets_tags_only():
    """Storage Blob Data Contributor cannot set blob index tags (blobs/tags/write), and the only built-in role that can,
    Storage Blob Data Owner, grants every blob and container permission. The custom role grants that one action."""
    roles = roles_scope()
    (symbol,) = roles.resources("Microsoft.Authorization/roleDefinitions")
    assert f"custom:{symbol}" == CHUNK_TAG_WRITER
    props = body(roles.resources()[symbol])["properties"]
    assert props["type"] == "CustomRole"
    (permission,) = props["permissions"]
    assert [roles.eval(a) for a in permission["dataActions"]] == [BLOB_TAGS_WRITE]
    assert permission["actions"] == [] and permission["notActions"] == [] and permission["notDataActions"] == []
    # Assignable in this resource group only, and its name is unique in the tenant (roleName must be).
    (assignable,) = props["assignableScopes"]
    assert assignable["operator"]["operands"]["operand_1"]["function"]["type"] == "resource_group"
    assert assignable["operator"]["operands"]["operand_2"] == "id"
    assert "${uniqueString(resourceGroup().id)}" in props["roleName"]
    assert props["description"]


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


# generated/web/microsoft.web/2024-04-01 (Azure/bicep-types-az): SiteAuthSettingsV2Properties and what it holds.
AUTH_SETTINGS_V2 = {
    "": {"parent", "name", "kind", "properties"},
    "properties": {"globalValidation", "httpSettings", "identityProviders", "login", "platform"},
    "properties.platform": {"configFilePath", "enabled", "runtimeVersion"},
    "properties.globalValidation": {"excludedPaths", "redirectToProvider", "requireAuthentication",
                                    "unauthenticatedClientAction"},
    "properties.httpSettings": {"forwardProxy", "requireHttps", "routes"},
    "properties.identityProviders": {"apple", "azureActiveDirectory", "azureStaticWebApps",
                                     "customOpenIdConnectProviders", "facebook", "gitHub", "google",
                                     "legacyMicrosoftAccount", "twitter"},
    "properties.identityProviders.azureActiveDirectory": {"enabled", "isAutoProvisioned", "login", "registration",
                                                          "validation"},
    "properties.identityProviders.azureActiveDirectory.registration": {
        "clientId", "clientSecretCertificateIssuer", "clientSecretCertificateSubjectAlternativeName",
        "clientSecretCertificateThumbprint", "clientSecretSettingName", "openIdIssuer"},
    "properties.identityProviders.azureActiveDirectory.validation": {"allowedAudiences", "defaultAuthorizationPolicy",
                                                                     "jwtClaimChecks"},
    "properties.login": {"allowedExternalRedirectUrls", "cookieExpiration", "nonce", "preserveUrlFragmentsForLogins",
                         "routes", "tokenStore"},
    "properties.login.tokenStore": {"azureBlobStorage", "enabled", "fileSystem", "tokenRefreshExtensionHours"},
}


def test_entra_sign_in_is_an_option_that_keeps_acs_and_event_grid_working():
    """signIn = entraId puts App Service Authentication in front of the page and the API; ACS callbacks and the
    Event Grid webhook cannot sign in (they authenticate with ACS's JWT and the webhook key), so exactly those stay
    open. Off by default: the function key alone guards the API, as before."""
    scope = module_scope("functions")
    found = {s: r for s, r in scope.resources("Microsoft.Web/sites/config").items()
             if body(r).get("name") == "authsettingsV2"}
    assert len(found) == 1
    res = next(iter(found.values()))
    assert res["api_version"] == "2024-04-01"
    assert ref(res["config"]["condition"]) is not None or res["config"].get("condition")  # only when asked for
    assert scope.param_value("signIn") == "none" and main_scope().param_value("signIn") == "none"
    for path, allowed in AUTH_SETTINGS_V2.items():
        for obj in _at(body(res), path):
            assert set(obj) <= allowed, (path, set(obj) - allowed)
    props = body(res)["properties"]
    gv = props["globalValidation"]
    assert gv["requireAuthentication"] is True and gv["unauthenticatedClientAction"] == "RedirectToLoginPage"
    anonymous = {f"/api/{route}" for _name, (route, _m, level) in _http_functions().items() if level == "ANONYMOUS"
                 and not route.startswith("ui")}
    assert set(gv["excludedPaths"]) == anonymous | {"/runtime/webhooks/eventgrid"}
    assert props["httpSettings"]["requireHttps"] is True
    assert props["login"]["tokenStore"]["enabled"] is False
    assert module_decl("functions")["params"]["signIn"] == "signIn"


def _http_functions() -> dict[str, tuple[str, list[str], str]]:
    from tests.test_functions_indexing import EXPECTED_HTTP

    return EXPECTED_HTTP
