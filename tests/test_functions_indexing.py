"""Would the real Functions host find our functions? Applies the Python worker's own indexing rule to the
deployment package (the repo minus .funcignore) in a fresh interpreter that sees only what Azure would.

The rule, as in azure-functions-python-worker (`dispatcher.load_function_metadata`, `loader.index_function_app`,
`bindings.meta`): the script name comes from PYTHON_SCRIPT_FILE_NAME (default function_app.py) and must match
`^[a-zA-Z0-9_][a-zA-Z0-9_\\-]*\\.py$`; if `<app root>/<script>` does not exist nothing is indexed (the app is
treated as v1); otherwise the module named by the script's *stem* is imported from sys.path — where a package of
the same name wins over the script, and where the app root comes last on Linux Consumption — and it must hold
exactly one FunctionRegister, whose get_functions() is the app. With HTTP streams (PYTHON_ENABLE_INIT_INDEXING
true and the extension imported) an HTTP trigger's parameter must be the extension's request type and its return
annotation one of its response types.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from function_app.settings import ENTRY_SCRIPT, FIXED_VALUES, QUEUE_CONNECTION

REPO = Path(__file__).resolve().parent.parent

EXPECTED_HTTP = {
    "CreateCall": ("calls", ["POST"], "FUNCTION"),
    "HangUp": ("calls/{callConnectionId}", ["DELETE"], "FUNCTION"),
    "StartStreaming": ("calls/{callConnectionId}/streaming/start", ["POST"], "FUNCTION"),
    "StopStreaming": ("calls/{callConnectionId}/streaming/stop", ["POST"], "FUNCTION"),
    "Callbacks": ("callbacks", ["POST"], "ANONYMOUS"),
    "ListRecordings": ("recordings", ["GET"], "FUNCTION"),
    "GetRecording": ("recordings/{callConnectionId}", ["GET"], "FUNCTION"),
    "GetRecordingAudio": ("recordings/{callConnectionId}/audio", ["GET"], "FUNCTION"),
    "GetRecordingPeaks": ("recordings/{callConnectionId}/peaks", ["GET"], "FUNCTION"),
    "RecordingsPage": ("ui", ["GET"], "ANONYMOUS"),  # code only: every data request it makes carries the key
    "RecordingsPageAsset": ("ui/{asset}", ["GET"], "ANONYMOUS"),
}
EXPECTED_EVENT_GRID = {"IncomingCall": "event"}
EXPECTED_OTHER = {  # binding fields the host reads (the queue trigger's connection names app settings)
    "FinalizeRecording": {"type": "queueTrigger", "name": "msg", "queueName": "recording-finalize",
                          "connection": "RecordingsStorage"},
    "StreamingRestart": {"type": "queueTrigger", "name": "msg", "queueName": "streaming-restart",
                         "connection": "RecordingsStorage"},
    "SweepRecordings": {"type": "timerTrigger", "name": "timer", "schedule": "0 */5 * * * *"},
}

# Runs in `python -S` (no site-packages, no .pth: our editable install is invisible), as the worker would.
WORKER_RULE = r"""
import importlib, json, os, re, sys
app_dir, deps, order = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:] = ([app_dir, deps] if order == "dedicated" else [deps, app_dir]) + [p for p in sys.path if p]
script = os.environ.get("PYTHON_SCRIPT_FILE_NAME", "function_app.py")
if not re.match(r"^[a-zA-Z0-9_][a-zA-Z0-9_\-]*\.py$", script):
    print(json.dumps({"error": "invalid script name"})); sys.exit()
path = os.path.join(app_dir, script)
if not os.path.exists(path):
    print(json.dumps({"indexed": None})); sys.exit()
module = importlib.import_module(os.path.splitext(os.path.basename(path))[0])
import azure.functions as func
apps = [getattr(module, n) for n in dir(module) if isinstance(getattr(module, n, None), func.FunctionRegister)]
if len(apps) != 1:
    print(json.dumps({"error": f"{len(apps)} FunctionRegister instances", "module": module.__file__}))
    sys.exit()
functions = apps[0].get_functions()
http_v2 = False
if os.environ.get("PYTHON_ENABLE_INIT_INDEXING", "").lower() in ("1", "true"):
    import azurefunctions.extensions.base as ext
    http_v2 = ext.HttpV2FeatureChecker.http_v2_enabled()
import typing
out = []
for f in functions:
    bindings = json.loads(f.get_function_json())["bindings"]
    fn = f.get_user_function()
    hints = typing.get_type_hints(fn)
    trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
    pytype = hints.get(trigger["name"])
    if trigger["type"] == "httpTrigger" and http_v2:
        ok = ext.RequestTrackerMeta.check_type(pytype) and ext.ResponseTrackerMeta.check_type(hints.get("return"))
    else:
        ok = func.get_binding_registry().get(trigger["type"]).check_input_type_annotation(pytype)
    out.append({"name": f.get_function_name(), "bindings": bindings, "types_ok": bool(ok)})
mods = {m: getattr(sys.modules.get(m), "__file__", None) for m in ("function_app", "common", module.__name__)}
print(json.dumps({"indexed": out, "http_v2": http_v2, "modules": mods}))
"""


def funcignore_patterns() -> list[str]:
    lines = (REPO / ".funcignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: Path, is_dir: bool, patterns: list[str]) -> bool:
    """The gitignore subset .funcignore uses: `name/` (a directory anywhere), `name` or glob (any path part)."""
    for pattern in patterns:
        if pattern.endswith("/"):
            if is_dir and fnmatch.fnmatch(rel.name, pattern.rstrip("/")):
                return True
        elif fnmatch.fnmatch(rel.name, pattern) or fnmatch.fnmatch(str(rel), pattern):
            return True
    return False


def deployment_copy(dest: Path) -> Path:
    """What `func azure functionapp publish` would upload: the repo minus .funcignore (and untracked junk)."""
    patterns = funcignore_patterns()
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO)
        dirs[:] = [d for d in dirs if not ignored(rel_root / d, True, patterns)]
        for name in files:
            rel = rel_root / name
            if not ignored(rel, False, patterns):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)
    return dest


def run_worker_rule(app_dir: Path, env: dict[str, str], order: str = "consumption") -> dict:
    deps = sysconfig.get_paths()["purelib"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ACS_", "AZURE_"))}
    proc = subprocess.run([sys.executable, "-S", "-c", WORKER_RULE, str(app_dir), deps, order],
                          env={**clean, **env}, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deployment_copy(tmp_path_factory.mktemp("wwwroot"))


@pytest.fixture(scope="module")
def local_settings() -> dict[str, str]:
    return json.loads((REPO / "local.settings.example.json").read_text())["Values"]


def test_deployment_package_holds_the_app_and_nothing_else(package: Path) -> None:
    top = {p.name for p in package.iterdir()}
    assert {"host.json", ENTRY_SCRIPT, "requirements.txt", "function_app", "common"} <= top
    assert not top & {"streamer", "infra", "tests", "devstack", "recorder_cli", "benchmarks", ".venv"}
    assert not (package / "function_app.py").exists()
    host = json.loads((package / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}


def test_settings_name_the_entry_script(local_settings: dict[str, str]) -> None:
    assert FIXED_VALUES["PYTHON_SCRIPT_FILE_NAME"] == ENTRY_SCRIPT
    for name, value in FIXED_VALUES.items():
        if name.startswith(f"{QUEUE_CONNECTION}__"):  # the trigger's identity connection: Azure only
            assert name not in local_settings
            continue
        assert local_settings[name] == value
    assert local_settings[QUEUE_CONNECTION] == "UseDevelopmentStorage=true"  # locally a connection string


@pytest.mark.parametrize("order", ["consumption", "dedicated"])
def test_worker_indexes_every_function_with_its_bindings(package: Path, order: str) -> None:
    result = run_worker_rule(package, dict(FIXED_VALUES), order)
    assert "error" not in result, result
    for module_file in result["modules"].values():
        assert module_file and Path(module_file).is_relative_to(package), result["modules"]
    assert result["http_v2"] is True
    functions = {f["name"]: f for f in result["indexed"]}
    assert set(functions) == set(EXPECTED_HTTP) | set(EXPECTED_EVENT_GRID) | set(EXPECTED_OTHER)
    for name, wanted in EXPECTED_OTHER.items():
        (binding,) = functions[name]["bindings"]
        assert {k: binding.get(k) for k in wanted} == wanted, name
        assert functions[name]["types_ok"], name
    for name, (route, methods, auth) in EXPECTED_HTTP.items():
        bindings = functions[name]["bindings"]
        assert bindings[0] == {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": methods,
                               "authLevel": auth, "route": route}, name
        assert bindings[1] == {"direction": "OUT", "type": "http", "name": "$return"}
        assert functions[name]["types_ok"], f"{name}: the worker would refuse its type annotations"
    for name, arg in EXPECTED_EVENT_GRID.items():
        assert functions[name]["bindings"] == [{"direction": "IN", "type": "eventGridTrigger", "name": arg}]
        assert functions[name]["types_ok"]


def test_only_callbacks_and_the_page_code_are_anonymous() -> None:
    anonymous = [n for n, (_, _, auth) in EXPECTED_HTTP.items() if auth != "FUNCTION"]
    assert anonymous == ["Callbacks", "RecordingsPage", "RecordingsPageAsset"]


def test_without_the_setting_nothing_would_be_indexed(package: Path) -> None:
    """The default script name does not exist at our app root: the worker would index no function at all."""
    assert run_worker_rule(package, {"PYTHON_ENABLE_INIT_INDEXING": "1"})["indexed"] is None


def test_a_package_shadows_a_root_script_of_the_same_name(tmp_path: Path) -> None:
    """Why the entry script is not function_app.py: the stem import finds the package, not the script."""
    (tmp_path / "function_app").mkdir()
    (tmp_path / "function_app" / "__init__.py").write_text("")
    (tmp_path / "function_app.py").write_text("import azure.functions as func\napp = func.FunctionApp()\n")
    result = run_worker_rule(tmp_path, {"PYTHON_SCRIPT_FILE_NAME": "function_app.py"})
    assert result["error"] == "0 FunctionRegister instances"
    assert result["module"].endswith("function_app/__init__.py")
