"""One lock file, one dependency set per deployable.

requirements.lock is the only place versions are pinned (scripts/lock.py resolves pyproject.toml into it); the
streamer image installs streamer/requirements.txt and the Functions remote build requirements.txt, both exported
from the lock. Everything here is offline: the lock is read, never re-resolved, and the dependency graph comes from
the metadata of what bootstrap installed from that same lock.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("project_lock", ROOT / "scripts" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()

# Where each deployable runs (infra/bicep/modules/functions.bicep: Python 3.11 on Linux; streamer/Dockerfile:
# python:3.11-slim): the platform on which "exactly what it needs" is judged.
TARGET_ENV = {
    "implementation_name": "cpython", "implementation_version": "3.11.9", "os_name": "posix",
    "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
    "platform_system": "Linux", "platform_version": "", "python_full_version": "3.11.9", "python_version": "3.11",
    "sys_platform": "linux",
}

# What each deployable is made of, and the extra that declares its dependencies.
DEPLOYABLES = {
    "streamer": ["streamer", "common"],
    "functions": ["function_app", "common", "function_entry.py"],
    "cli": ["recorder_cli"],
}
# Declared although no module imports them: what they are for.
NOT_IMPORTED = {
    "uvloop": "the event loop uvicorn runs the streamer on (loop='uvloop')",
    "websockets": "the library under uvicorn's websockets-sansio implementation (ws='websockets-sansio')",
    "aiohttp": "the HTTP transport of azure-core's async clients (storage, identity)",
}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(set_name: str | None, base: bool = True) -> list[Requirement]:
    """The base list (what common/ needs) and SET's extra, self-references expanded."""
    out: list[Requirement] = [Requirement(r) for r in project()["dependencies"]] if base else []
    pending, seen = [set_name] if set_name else [], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in project()["optional-dependencies"][extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == canonicalize_name(project()["name"]):
                pending.extend(req.extras)
            else:
                out.append(req)
    return out


# -- the lock and its exports --------------------------------------------------------------------------------------

def test_lock_follows_pyproject_and_the_exports_follow_the_lock():
    assert lock.check() == []


def test_lock_pins_every_entry_with_hashes_and_names_no_host():
    text = lock.LOCK.read_text()
    entries = lock.parse(text)
    assert len(entries) > 50
    for e in entries:
        assert "==" in e.requirement[0] and any("--hash=sha256:" in ln for ln in e.requirement), e.requirement[0]
        assert "dev" in e.sets, e.name
        assert set(e.sets) <= {"dev", *lock.DEPLOYABLE_SETS}, e.sets
    for path in (lock.LOCK, *lock.EXPORTS.values()):
        body = path.read_text()
        assert "://" not in body, path  # no download addresses, no index
        assert not any(ln.startswith(("-i", "--index", "--extra-index", "--find-links", "-f ", "-e"))
                       for ln in body.splitlines()), path


def test_export_takes_exactly_the_entries_of_its_set_and_check_sees_a_stale_file(tmp_path, monkeypatch):
    text = (
        "# inputs-sha256: " + "0" * 64 + "\n"
        "alpha==1.0 \\\n    --hash=sha256:aa\n    # via x\n    # sets: dev functions\n"
        "beta==2.0 ; sys_platform == 'win32' \\\n    --hash=sha256:bb\n    # sets: dev streamer functions\n"
        "gamma==3.0 \\\n    --hash=sha256:cc\n    # sets: dev\n"
    )
    body = lock.export("functions", text).split("\n", 3)[-1]
    assert [ln for ln in lock.export("functions", text).splitlines() if not ln.startswith("#")] == [
        "alpha==1.0 \\", "    --hash=sha256:aa", "beta==2.0 ; sys_platform == 'win32' \\", "    --hash=sha256:bb"]
    assert "gamma" not in body and "# via" not in body and "# sets" not in body
    assert [e.name for e in lock.parse(lock.export("dev", text))] == ["alpha", "beta", "gamma"]

    fake_lock, fake_export = tmp_path / "requirements.lock", tmp_path / "requirements.txt"
    fake_lock.write_text(text.replace("0" * 64, lock.inputs_digest()))
    fake_export.write_text(lock.export("functions", text))
    monkeypatch.setattr(lock, "LOCK", fake_lock)
    monkeypatch.setattr(lock, "EXPORTS", {"functions": fake_export})
    assert lock.check() == []
    fake_export.write_text(fake_export.read_text().replace("alpha==1.0", "alpha==1.1"))
    assert any("requirements.txt" in p for p in lock.check())
    fake_export.write_text(lock.export("functions", text))
    fake_lock.write_text(text)  # resolved from other declarations
    assert any("pyproject.toml" in p for p in lock.check())


def test_bootstrap_installs_the_whole_lock_and_reinstalls_when_it_changes():
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "--require-hashes -r requirements.lock" in script
    assert "--no-deps -e ." in script
    stamp = next(ln for ln in script.splitlines() if ln.startswith("stamp="))
    assert "requirements.lock" in stamp and "pyproject.toml" in stamp


# -- each deployable declares what it imports, and installs only that --------------------------------------------

@cache
def module_owners() -> dict[str, str]:
    """Dotted package or module name -> the installed distribution that ships it (namespace packages such as
    `azure` resolve by their deepest owned part: azure.storage.blob -> azure-storage-blob)."""
    owners: dict[str, str] = {}
    for dist in md.distributions():
        for f in dist.files or ():
            parts = f.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
                continue
            name = parts[-1].split(".")[0]
            if not parts[-1].endswith((".py", ".so", ".pyd")):
                continue
            dotted = ".".join([*parts[:-1], name]) if name != "__init__" else ".".join(parts[:-1])
            if dotted and all(p.isidentifier() for p in dotted.split(".")):
                owners.setdefault(dotted, canonicalize_name(dist.metadata["Name"]))
    return owners


def imported_distributions(paths: list[str]) -> dict[str, set[str]]:
    """Third-party distributions imported by the given files and packages -> the modules importing them."""
    local = {"common", "streamer", "function_app", "recorder_cli", "devstack", "benchmarks", "tests",
             "function_entry"}
    found: dict[str, set[str]] = {}
    files = [p for rel in paths for p in ([ROOT / rel] if rel.endswith(".py") else (ROOT / rel).rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in local or top in sys.stdlib_module_names or top == "__future__":
                    continue
                parts = module.split(".")
                owner = next((module_owners()[".".join(parts[:i])] for i in range(len(parts), 0, -1)
                              if ".".join(parts[:i]) in module_owners()), None)
                assert owner, f"{path.relative_to(ROOT)} imports {module}, which no installed distribution ships"
                found.setdefault(owner, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("set_name", [None, *DEPLOYABLES])
def test_each_deployable_declares_what_it_imports(set_name):
    """None is common/ and the base list; a deployable also has the base list, so its extra is judged alone."""
    imported = imported_distributions(DEPLOYABLES[set_name] if set_name else ["common"])
    names = {canonicalize_name(r.name) for r in declared(set_name)}
    missing = {d: sorted(files) for d, files in imported.items() if d not in names}
    what = set_name or "common"
    assert not missing, f"imported by the {what} code but not declared for it in pyproject.toml: {missing}"
    own = {canonicalize_name(r.name) for r in declared(set_name, base=set_name is None)}
    unused = own - set(imported) - set(NOT_IMPORTED)
    assert not unused, f"declared for {what} but imported by none of its modules: {sorted(unused)}"


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in on the target platform, walked through installed metadata."""
    needed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(r, frozenset()) for r in requirements]
    while pending:
        req, parent_extras = pending.pop()
        envs = [{**TARGET_ENV, "extra": e} for e in (parent_extras or {""})]
        if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        needed.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            pytest.fail(f"{name} is not installed: run scripts/bootstrap.sh (it installs the whole lock)")
        pending.extend((Requirement(r), frozenset(req.extras)) for r in dist.requires or ())
    return needed


@pytest.mark.parametrize("set_name", list(lock.EXPORTS))
def test_each_export_holds_exactly_what_its_deployable_needs(set_name):
    """An independent check of what uv resolved for the set: the export is closed under dependencies on the
    deployable's platform (nothing missing, as starlette once was from requirements.txt) and holds nothing more
    than that, apart from entries whose marker excludes that platform."""
    entries = lock.parse(lock.EXPORTS[set_name].read_text())
    exported = {e.name: e for e in entries}
    needed = closure(declared(set_name))
    assert not needed - set(exported), f"{set_name} needs these but its export lacks them: {needed - set(exported)}"

    def applies(e) -> bool:
        line = e.requirement[0].rstrip(" \\")
        return ";" not in line or Marker(line.split(";", 1)[1]).evaluate(TARGET_ENV)

    extra = {e.name for e in entries if applies(e)} - needed
    assert not extra, f"{set_name}'s export installs what it does not need: {sorted(extra)}"
    # The graph walked above is that of the pinned releases (bootstrap installed the lock).
    for name in needed:
        versions = {e.version for e in entries if e.name == name and applies(e)}
        assert md.version(name) in versions, (name, md.version(name), versions)


def test_the_planes_do_not_install_each_other():
    streamer = {e.name for e in lock.parse(lock.EXPORTS["streamer"].read_text())}
    functions = {e.name for e in lock.parse(lock.EXPORTS["functions"].read_text())}
    for name in ("azure-functions", "azurefunctions-extensions-http-fastapi", "azure-communication-callautomation",
                 "fastapi", "typer", "pytest", "mypy"):
        assert name not in streamer, name
    # numpy is in both on purpose: the streamer cuts frames with it, the finalizer interleaves the multichannel file
    for name in ("uvloop", "pybase64", "aiohttp", "azure-monitor-opentelemetry", "prometheus-client",
                 "typer", "pytest", "mypy"):
        assert name not in functions, name



def test_every_module_is_named_where_a_newcomer_looks() -> None:
    """The README's module table names each streamer/ and common/ module, docs/control-plane.md each function_app/
    one (a module nobody can find is one nobody carries); and no code cites numbered sections of a document that
    is not in the repository (docs/acs-protocol.md is cited by its headings)."""
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    control = (repo / "docs" / "control-plane.md").read_text()
    for folder, doc in (("streamer", readme), ("common", readme), ("function_app", control)):
        for path in sorted((repo / folder).glob("*.py")):
            if path.name != "__init__.py":
                assert f"`{path.name}`" in doc or f"{folder}/{path.name}" in doc, f"{folder}/{path.name} is not named"
    for folder in ("common", "streamer", "function_app", "devstack", "recorder_cli"):
        for path in (repo / folder).rglob("*.py"):
            cited = [line for line in path.read_text().splitlines() if "§" in line and "RFC" not in line]
            assert not cited, f"{path.relative_to(repo)} cites a numbered section: {cited[0].strip()}"
