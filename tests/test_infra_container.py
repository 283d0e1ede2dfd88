"""The streamer image and its Container App agree with the streamer's code: entry command, port, probes,
termination grace, per-replica cap, scale rule; and the packaging files (.dockerignore, .funcignore, azure.yaml)
send each app exactly the code it needs.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from tests.test_infra_bicep import ROOT, main_scope, module_scope

DOCKERFILE = ROOT / "streamer" / "Dockerfile"


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
    """Nested mappings of `key: value` lines (all azure.yaml uses); no lists, no flow style."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        assert not line.strip().startswith("- "), f"lists are not supported: {raw!r}"
        key, _, value = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value.strip():
            parent[key] = value.strip().strip("'\"")
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


# ---------------------------------------------------------------------------------------------------------------
# Shared facts
# ---------------------------------------------------------------------------------------------------------------

def streamer_app() -> dict[str, Any]:
    return module_scope("streamer").resource("Microsoft.App/containerApps")


def streamer_container() -> dict[str, Any]:
    (container,) = streamer_app()["properties"]["template"]["containers"]
    return container


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
    probe_ports = {scope.eval(p["httpGet"]["port"]) for p in streamer_container()["probes"]}
    env = {e["name"]: scope.eval(e.get("value")) for e in streamer_container()["env"]}
    assert exposed == {default}, (exposed, default)
    assert env_port == {default}
    assert target == default
    assert probe_ports == {default}
    assert env["PORT"] == str(default)


def test_probes_use_healthz_and_readyz():
    by_type = {p["type"]: p["httpGet"]["path"] for p in streamer_container()["probes"]}
    assert by_type["Liveness"] == "/healthz"
    assert by_type["Readiness"] == "/readyz"
    assert by_type.get("Startup", "/healthz") == "/healthz"
    for probe in streamer_container()["probes"]:  # Container Apps' documented limits
        assert 1 <= probe.get("failureThreshold", 3) <= 10, probe
        assert 1 <= probe.get("periodSeconds", 10) <= 240, probe
        assert 0 <= probe.get("initialDelaySeconds", 0) <= 60, probe
        assert probe["type"] == "Readiness" or probe.get("successThreshold", 1) == 1, probe
    routes = (ROOT / "streamer" / "app.py").read_text()
    assert 'Route("/healthz"' in routes and 'Route("/readyz"' in routes


def test_termination_grace_exceeds_flush_budget():
    scope = module_scope("streamer")
    template = streamer_app()["properties"]["template"]
    grace = scope.eval(template["terminationGracePeriodSeconds"])
    env = {e["name"]: scope.eval(e.get("value")) for e in streamer_container()["env"]}
    configured = float(env["SHUTDOWN_GRACE_SECONDS"])
    assert isinstance(grace, int)
    assert grace > configured, (grace, configured)
    assert grace > code_defaults().shutdown_grace_seconds
    # main.bicep's own defaults, as `azd up` uses them
    main = main_scope()
    assert main.param_value("streamerTerminationGracePeriodSeconds") > main.param_value("streamerShutdownGraceSeconds")


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
