"""The streamer image and its Container App agree with the streamer's code: entry command, port, probes,
termination grace, per-replica cap, scale rule; and the packaging files (.dockerignore, .funcignore, azure.yaml)
send each app exactly the code it needs.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_infra_bicep import ROOT, main_scope, module_bounds_check, module_scope

DOCKERFILE = ROOT / "streamer" / "Dockerfile"
HOOKS = ROOT / "infra" / "hooks"


# ---------------------------------------------------------------------------------------------------------------
# Small parsers (no Docker, no YAML library here)
# ---------------------------------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        rx = _glob_regex(pat.strip("/"))
        if any(rx.match(c) for c in candidates):
            included = negate
    return included


def gitignore_excludes(patterns: list[str], path: str) -> bool:
    """The subset of .gitignore rules .funcignore uses: `name/` = that directory anywhere, else a path glob."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if pat.endswith("/"):
            rx = _glob_regex(pat.rstrip("/"))
            hit = any(rx.match(p) for p in parts[:-1])
        else:
            rx = _glob_regex(pat.lstrip("/"))
            hit = bool(rx.match(path)) or ("/" not in pat and bool(rx.match(parts[-1])))
        if hit:
            excluded = not negate
    return excluded


def ignore_patterns(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def simple_yaml(text: str) -> dict[str, Any]:
    """Nested mappings of `key: value` lines, and lists of `- value` or `- key: value` items indented under their key
    (all azure.yaml uses); no multi-line list items, no flow style."""
    root: dict[str, Any] = {}
    # (indent, container, its parent mapping, its key there)
    stack: list[tuple[int, Any, dict[str, Any] | None, str | None]] = [(-1, root, None, None)]
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        while stack[-1][0] >= indent:
            stack.pop()
        level, container, parent, parent_key = stack[-1]
        if stripped.startswith("- "):
            if isinstance(container, dict):  # the first item: the key holds a list, not a mapping
                assert not container and parent is not None and parent_key is not None, f"misplaced item: {raw!r}"
                container = parent[parent_key] = []
                stack[-1] = (level, container, parent, parent_key)
            key, sep, value = stripped[2:].partition(":")
            assert not sep or value.strip(), f"nested list items are not supported: {raw!r}"
            container.append({key.strip(): value.strip().strip("'\"")} if sep else key.strip().strip("'\""))
            continue
        assert isinstance(container, dict), f"a mapping entry among list items: {raw!r}"
        key, _, value = stripped.partition(":")
        if value.strip():
            container[key] = value.strip().strip("'\"")
        else:
            container[key] = {}
            stack.append((indent, container[key], container, key))
    return root


def test_simple_yaml_reads_mappings_and_lists():
    doc = simple_yaml("a:\n  b: 1  # c\n  steps:\n    - x: y z\n    - w\nd: 'e'\n")
    assert doc == {"a": {"b": "1", "steps": [{"x": "y z"}, "w"]}, "d": "e"}


# ---------------------------------------------------------------------------------------------------------------
# Shared facts
# ---------------------------------------------------------------------------------------------------------------

def streamer_app() -> dict[str, Any]:
    return module_scope("streamer").resource("Microsoft.App/containerApps")


def streamer_container() -> dict[str, Any]:
    (container,) = streamer_app()["properties"]["template"]["containers"]
    return container


# After the first deploy main.bicep gets the image azd pushed (SERVICE_STREAMER_IMAGE_NAME, main.parameters.json).
REAL_IMAGE = {"streamerImage": "registry.example/acs-call-recorder/streamer-dev:azd-deploy-1"}

# The port each placeholder image listens on, from its publisher's documentation: the ASP.NET sample uses the
# default of .NET 8+ images (8080, dotnet/dotnet-docker samples/aspnetapp README); k8se/quickstart, the placeholder
# before, serves on 80.
PLACEHOLDER_PORTS = {
    "mcr.microsoft.com/dotnet/samples:aspnetapp": 8080,
    "mcr.microsoft.com/k8se/quickstart:latest": 80,
}


def streamer_probes(main_overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The streamer container's probes as deployed with these main.bicep parameters (the real image by default)."""
    scope = module_scope("streamer", REAL_IMAGE if main_overrides is None else main_overrides)
    (container,) = scope.resource("Microsoft.App/containerApps")["properties"]["template"]["containers"]
    probes = scope.eval(container["probes"])
    assert isinstance(probes, list), container["probes"]
    return probes


def code_defaults():
    from streamer.settings import Settings

    return Settings()


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------------------

def test_dockerfile_parser_sees_instructions():
    got = dockerfile_instructions("# c\nFROM a AS b\nRUN x \\\n  && y\nUSER 1\n")
    assert got == [("FROM", "a AS b"), ("RUN", "x  && y"), ("USER", "1")]


def test_dockerfile_base_user_and_entrypoint():
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [a.split()[0] for k, a in ins if k == "FROM"]
    assert froms and all(re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", f) for f in froms), froms
    final = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM"):]
    users = [a for k, a in final if k == "USER"]
    assert users, "the final stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    entry = [json.loads(a) for k, a in final if k in ("ENTRYPOINT", "CMD")]
    assert entry == [["python", "-m", "streamer"]], entry
    assert (ROOT / "streamer" / "__main__.py").is_file()
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert "[dev]" not in runs and "pip install" in runs
    assert "--workers" not in runs + json.dumps(entry)


def test_image_installs_only_the_streamer_set_of_the_lock():
    """Dependencies come from streamer/requirements.txt (the lock's `streamer` set, hash-checked; its contents are
    checked in tests/test_dependencies.py); the project itself goes in without dependencies, so no extra and no
    unpinned requirement can slip in."""
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    installs = [cmd.strip() for k, a in ins if k == "RUN" for cmd in a.split("&&") if "pip install" in cmd]
    assert installs == ["/opt/venv/bin/pip install --require-hashes -r streamer/requirements.txt",
                        "/opt/venv/bin/pip install --no-deps ."], installs
    copies = [a.split()[:-1] for k, a in ins if k == "COPY" and "--from" not in a]
    first_install = next(i for i, (k, a) in enumerate(ins) if k == "RUN" and "pip install" in a)
    assert ["streamer/requirements.txt"] in copies
    assert any(k == "COPY" and a.startswith("streamer/requirements.txt") for k, a in ins[:first_install])


def test_one_uvicorn_worker_with_sansio_websockets():
    main = (ROOT / "streamer" / "__main__.py").read_text()
    assert 'ws="websockets-sansio"' in main
    assert "workers" not in main  # uvicorn.Server runs one worker; a process manager would be needed for more


def test_ports_agree_everywhere():
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    exposed = {int(p.split("/")[0]) for k, a in ins if k == "EXPOSE" for p in a.split()}
    env_port = {int(m.group(1)) for k, a in ins if k == "ENV" for m in [re.search(r"\bPORT=(\d+)", a)] if m}
    default = code_defaults().port
    scope = module_scope("streamer")
    target = scope.eval(streamer_app()["properties"]["configuration"]["ingress"]["targetPort"])
    probe_ports = {scope.eval(p["httpGet"]["port"]) for p in streamer_probes()}
    env = {e["name"]: scope.eval(e.get("value")) for e in streamer_container()["env"]}
    assert exposed == {default}, (exposed, default)
    assert env_port == {default}
    assert target == default
    assert probe_ports == {default}
    assert env["PORT"] == str(default)


def test_probes_use_healthz_and_readyz():
    probes = streamer_probes()
    by_type = {p["type"]: p["httpGet"]["path"] for p in probes}
    assert by_type["Liveness"] == "/healthz"
    assert by_type["Readiness"] == "/readyz"
    assert by_type.get("Startup", "/healthz") == "/healthz"
    for probe in probes:  # Container Apps' documented limits
        assert 1 <= probe.get("failureThreshold", 3) <= 10, probe
        assert 1 <= probe.get("periodSeconds", 10) <= 240, probe
        assert 0 <= probe.get("initialDelaySeconds", 0) <= 60, probe
        assert probe["type"] == "Readiness" or probe.get("successThreshold", 1) == 1, probe
    routes = (ROOT / "streamer" / "app.py").read_text()
    assert 'Route("/healthz"' in routes and 'Route("/readyz"' in routes


def test_first_provision_placeholder_comes_up_on_the_port_the_real_image_keeps():
    """`azd deploy` (and `az containerapp update --image`) replace the image and nothing else, so the first
    provision's configuration is the real image's until the next provision: the placeholder must serve on its
    ingress port and get no probe it cannot answer."""
    def deployed(overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        scope = module_scope("streamer", overrides)
        app = scope.resource("Microsoft.App/containerApps")
        (container,) = app["properties"]["template"]["containers"]
        return scope.eval(container["image"]), {
            "targetPort": scope.eval(app["properties"]["configuration"]["ingress"]["targetPort"]),
            "env": {e["name"]: scope.eval(e.get("value")) for e in container["env"]},
            "probes": scope.eval(container["probes"]),
        }

    first_image, first = deployed({})  # azd's first provision: SERVICE_STREAMER_IMAGE_NAME is still empty
    real_image, real = deployed(REAL_IMAGE)
    assert main_scope().param_value("streamerImage") == ""
    assert real_image == REAL_IMAGE["streamerImage"]
    assert first_image in PLACEHOLDER_PORTS, f"placeholder {first_image}: which port does it serve?"
    # It answers where the ingress (and Container Apps' default TCP probes) look, which is where the streamer listens.
    assert PLACEHOLDER_PORTS[first_image] == first["targetPort"] == real["targetPort"] == code_defaults().port
    # No HTTP probes it cannot answer (it has no /readyz); the real image gets them.
    assert first["probes"] == [] and {p["type"] for p in real["probes"]} == {"Startup", "Liveness", "Readiness"}
    assert first["env"] == real["env"]
    # Negative control: the placeholder used before listens on 80, where nothing would reach it.
    assert PLACEHOLDER_PORTS["mcr.microsoft.com/k8se/quickstart:latest"] != real["targetPort"]


def test_azd_up_provisions_again_after_deploying():
    # The first real revision has the placeholder's configuration (no HTTP probes) until a provision that knows the
    # image: azd up's own workflow runs it.
    steps = [step["azd"] for step in simple_yaml((ROOT / "azure.yaml").read_text())["workflows"]["up"]["steps"]]
    assert steps == ["package --all", "provision", "deploy --all", "provision"], steps
    params = json.loads((ROOT / "infra" / "bicep" / "main.parameters.json").read_text())["parameters"]
    assert params["streamerImage"]["value"] == "${SERVICE_STREAMER_IMAGE_NAME=}"


# Seconds the termination grace period must leave after the streamer's two SHUTDOWN_GRACE_SECONDS waits: spooling
# what is left (at most UPLOAD_MEMORY_BYTES to a local disk) and exiting.
SHUTDOWN_MARGIN_SECONDS = 10


def shutdown_grace_waits() -> int:
    """How many times one SIGTERM can make the streamer wait SHUTDOWN_GRACE_SECONDS, from its code: uvicorn's wait
    for open connections (timeout_graceful_shutdown) and the lifespan drain, when each is given the setting."""
    sources = {p: p.read_text() for p in (ROOT / "streamer").rglob("*.py")}
    uvicorn_wait = any(re.search(r"timeout_graceful_shutdown\s*=\s*[\w.(]*shutdown_grace_seconds", t)
                       for t in sources.values())
    drain_wait = any(re.search(r"\bdrain\([^)]*shutdown_grace_seconds", t) for t in sources.values())
    return int(uvicorn_wait) + int(drain_wait)


def test_termination_grace_outlasts_the_streamers_shutdown():
    scope = module_scope("streamer")
    template = streamer_app()["properties"]["template"]
    grace = scope.eval(template["terminationGracePeriodSeconds"])
    env = {e["name"]: scope.eval(e.get("value")) for e in streamer_container()["env"]}
    configured = float(env["SHUTDOWN_GRACE_SECONDS"])
    waits = shutdown_grace_waits()
    assert waits == 2, "the streamer's SIGTERM path changed: revisit containerapps.bicep's grace period"
    assert isinstance(grace, int)
    assert grace >= waits * configured + SHUTDOWN_MARGIN_SECONDS, (grace, configured)
    assert grace >= waits * code_defaults().shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS
    # The deployed grace period is the one main.bicep is given (azd up's default: 60 s).
    main = main_scope()
    assert grace == main.param_value("streamerTerminationGracePeriodSeconds") == 60
    assert configured == main.param_value("streamerShutdownGraceSeconds")
    # The module refuses a margin below SHUTDOWN_MARGIN_SECONDS (ARM checks it when the deployment starts).
    decorators = scope.params["shutdownMarginSeconds"]["decorators"]
    (minimum,) = [d["argument"] for d in decorators if d["type"] == "min_value"]
    assert minimum >= SHUTDOWN_MARGIN_SECONDS


@pytest.mark.parametrize(("flush", "grace", "stops"), [(25, 60, False), (25, 59, True), (25, 30, True),
                                                       (40, 90, False), (40, 60, True), (1, 12, False)])
def test_grace_the_streamer_could_outlast_stops_the_deployment(flush: int, grace: int, stops: bool):
    overrides = {"streamerShutdownGraceSeconds": flush, "streamerTerminationGracePeriodSeconds": grace}
    scope = module_bounds_check("streamer", overrides, "shutdownMarginSeconds", stops)
    if not stops:
        template = scope.resource("Microsoft.App/containerApps")["properties"]["template"]
        assert scope.eval(template["terminationGracePeriodSeconds"]) == grace


def test_scale_rule_suits_long_lived_websockets():
    scope = module_scope("streamer")
    scale = streamer_app()["properties"]["template"]["scale"]
    assert scope.eval(scale["minReplicas"]) >= 1
    assert main_scope().param_value("streamerMinReplicas") >= 1
    assert scope.eval(scale["maxReplicas"]) >= scope.eval(scale["minReplicas"])
    rules = scale["rules"]
    # HTTP and TCP rules count a socket once, at upgrade: they must not be what drives scaling.
    assert not any("http" in r or "tcp" in r for r in rules), rules
    (cpu,) = [r["custom"] for r in rules if r.get("custom", {}).get("type") == "cpu"]
    assert cpu["metadata"]["type"] == "Utilization"
    assert 10 <= int(scope.eval(cpu["metadata"]["value"])) <= 90


def test_per_replica_call_cap_is_set():
    scope = module_scope("streamer")
    env = {e["name"]: scope.eval(e.get("value")) for e in streamer_container()["env"]}
    assert int(env["MAX_ACTIVE_CALLS"]) == main_scope().param_value("streamerMaxActiveCalls") > 0


def test_spool_dir_is_a_mounted_volume():
    scope = module_scope("streamer")
    container = streamer_container()
    env = {e["name"]: scope.eval(e.get("value")) for e in container["env"]}
    mounts = {scope.eval(m["mountPath"]): m["volumeName"] for m in container["volumeMounts"]}
    assert env["SPOOL_DIR"] in mounts
    volumes = {v["name"]: v for v in streamer_app()["properties"]["template"]["volumes"]}
    assert volumes[mounts[env["SPOOL_DIR"]]]["storageType"] == "EmptyDir"


# ---------------------------------------------------------------------------------------------------------------
# What each deployment contains
# ---------------------------------------------------------------------------------------------------------------

def _local_imports(package: str) -> set[str]:
    tops = {"common", "streamer", "function_app", "recorder_cli", "devstack", "benchmarks", "tests"}
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found & tops


def test_image_needs_only_common_and_streamer():
    assert _local_imports("streamer") <= {"common", "streamer"}
    assert _local_imports("common") <= {"common"}


def test_dockerignore_sends_only_what_the_image_needs():
    patterns = ignore_patterns(ROOT / ".dockerignore")
    assert dockerignore_includes(["*", "!a"], "a/b.py") and not dockerignore_includes(["*", "!a"], "c/d.py")
    for path in ("pyproject.toml", "README.md", "common/acs_jwt.py", "streamer/app.py", "streamer/__main__.py"):
        assert dockerignore_includes(patterns, path), path
    for path in ("function_app/app.py", "tests/conftest.py", ".venv/bin/python", ".git/config",
                 "infra/bicep/main.bicep", "devstack/serve.py", "streamer/__pycache__/app.cpython-311.pyc",
                 "local.settings.json"):
        assert not dockerignore_includes(patterns, path), path
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    for k, args in ins:
        if k == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                probe = src.rstrip("/") + ("/__init__.py" if src.endswith("/") else "")
                assert dockerignore_includes(patterns, probe), f"COPY {src} but .dockerignore drops it"


def test_function_package_needs_only_common_and_function_app():
    assert _local_imports("function_app") <= {"common", "function_app"}


def test_funcignore_keeps_the_function_app_and_drops_the_rest():
    from function_app import settings

    patterns = ignore_patterns(ROOT / ".funcignore")
    keep = ["host.json", settings.ENTRY_SCRIPT, "function_app/app.py", "function_app/settings.py",
            "common/acs_jwt.py", "common/layout.py", "requirements.txt"]
    for path in keep:
        assert not gitignore_excludes(patterns, path), path
    drop = ["streamer/app.py", "infra/bicep/main.bicep", "tests/conftest.py", "devstack/serve.py",
            "benchmarks/run.py", ".venv/bin/python", "local.settings.json", "recorder_cli/main.py",
            "function_app/__pycache__/app.cpython-311.pyc", "pyproject.toml", "requirements.lock",
            "streamer/requirements.txt", "scripts/lock.py"]
    for path in drop:
        assert gitignore_excludes(patterns, path), path
    assert (ROOT / "host.json").is_file()


def test_function_package_has_requirements():
    # Flex Consumption builds Python apps remotely from requirements.txt (pyproject.toml is not read). It is the
    # lock's `functions` set, exported by scripts/lock.py; tests/test_dependencies.py checks it is current.
    req = ROOT / "requirements.txt"
    assert req.is_file(), "requirements.txt (the function app's runtime dependencies) is missing at the repo root"
    names = {re.split(r"[<>=!~\[; ]", ln.strip())[0].lower() for ln in req.read_text().splitlines()
             if ln.strip() and not ln.startswith(("#", "-"))}
    for needed in ("azure-functions", "azure-communication-callautomation", "azure-identity", "azure-storage-blob",
                   "starlette"):
        assert needed in names, f"requirements.txt lacks {needed}"


def test_azure_yaml_services_and_hook():
    doc = simple_yaml((ROOT / "azure.yaml").read_text())
    assert doc["infra"]["provider"] == "bicep"
    assert (ROOT / doc["infra"]["path"] / f"{doc['infra']['module']}.bicep").resolve() == \
        (ROOT / "infra" / "bicep" / "main.bicep").resolve()
    services = doc["services"]
    assert services["functions"]["host"] == "function" and services["functions"]["language"] == "python"
    streamer = services["streamer"]
    assert streamer["host"] == "containerapp"
    assert streamer["language"] == "docker", "the streamer is built by its Dockerfile, not as a Python project"
    project = ROOT / streamer["project"]
    assert (project / streamer["docker"]["path"]).resolve() == DOCKERFILE
    assert (project / streamer["docker"]["context"]).resolve() == ROOT
    # azd finds each service's resource by its azd-service-name tag.
    tags = {
        "functions": module_scope("functions").resource("Microsoft.Web/sites")["tags"],
        "streamer": streamer_app()["tags"],
    }
    for name, tag_expr in tags.items():
        union = tag_expr["function"]
        assert union["type"] == "union" and union["parameters"]["arg_2"] == {"'azd-service-name'": name}, tag_expr
    hook = doc["hooks"]["postdeploy"]
    for os_name in ("posix", "windows"):
        assert (ROOT / hook[os_name]["run"]).is_file()
    params = json.loads((ROOT / "infra" / "bicep" / "main.parameters.json").read_text())["parameters"]
    assert params["streamerImage"]["value"].startswith("${SERVICE_STREAMER_IMAGE_NAME")


# ---------------------------------------------------------------------------------------------------------------
# postdeploy hook: retries while the new function code is indexed, and does not wait after its last try
# ---------------------------------------------------------------------------------------------------------------

HOOK_ENV = {"AZURE_RESOURCE_GROUP": "rg-x", "EVENTGRID_SYSTEM_TOPIC_NAME": "evgt-x", "FUNCTION_APP_NAME": "func-x"}


def run_posix_hook(tmp_path: Path, failures: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run postdeploy.sh with stand-ins for `az` (fails `failures` times, then succeeds) and `sleep` (returns at
    once); returns the process and the calls both received, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    count = tmp_path / "az-count"
    stand_ins = {
        "az": f'n=$(cat "{count}" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "{count}"\n'
              f'echo "az $1 $2 $3" >> "{calls}"\n[ "$n" -gt {failures} ]\n',
        "sleep": f'echo "sleep $1" >> "{calls}"\n',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **HOOK_ENV}
    proc = subprocess.run(["sh", str(HOOKS / "postdeploy.sh")], capture_output=True, text=True, timeout=30, env=env)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_posix_hook_gives_up_after_ten_tries_without_a_last_wait(tmp_path: Path):
    proc, calls = run_posix_hook(tmp_path, failures=100)
    assert proc.returncode == 1, proc.stderr
    assert "could not create the IncomingCall subscription" in proc.stderr
    assert calls.count("az deployment group create") == 10
    assert calls.count("sleep 15") == 9
    assert calls[-1] == "az deployment group create", "the hook waited after its last try"


def test_posix_hook_stops_retrying_once_it_succeeds(tmp_path: Path):
    proc, calls = run_posix_hook(tmp_path, failures=2)
    assert proc.returncode == 0, proc.stderr
    assert "Event Grid: IncomingCall -> func-x/IncomingCall" in proc.stdout
    assert calls == ["az deployment group create", "sleep 15"] * 2 + ["az deployment group create"]


def sleeps_unguarded(ps1: str) -> list[int]:
    """Line numbers of `Start-Sleep` calls inside the retry loop that no `if ($attempt -lt ...)` block encloses,
    i.e. that also run after the last try. Tracks `{` / `}` nesting; enough for the hook's plain PowerShell (no pwsh
    on this machine to run it)."""
    found: list[int] = []
    stack: list[str] = []  # header line of each open block
    for number, line in enumerate(ps1.splitlines(), 1):
        code = line.split("#")[0]
        in_loop = any(h.lstrip().startswith("for ") for h in stack)
        guarded = any(re.search(r"\bif\s*\(\s*\$attempt\s+-lt\s+", h) for h in stack)
        if "Start-Sleep" in code and in_loop and not guarded:
            found.append(number)
        for ch in code:
            if ch == "{":
                stack.append(code)
            elif ch == "}" and stack:
                stack.pop()
    return found


def test_windows_hook_does_not_wait_after_its_last_try():
    old = ("for ($attempt = 1; $attempt -le 10; $attempt++) {\n    az x\n    if ($LASTEXITCODE -eq 0) { exit 0 }\n"
           "    Start-Sleep -Seconds 15\n}\n")
    assert sleeps_unguarded(old) == [4]  # negative control: the hook as it was
    ps1 = (HOOKS / "postdeploy.ps1").read_text()
    assert "Start-Sleep" in ps1
    assert sleeps_unguarded(ps1) == []
    # Same tries and wait as the POSIX hook.
    sh = (HOOKS / "postdeploy.sh").read_text()
    assert re.search(r"^\$attempts = 10$", ps1, re.M) and re.search(r"^attempts=10$", sh, re.M)
    assert "Start-Sleep -Seconds 15" in ps1 and "sleep 15" in sh
