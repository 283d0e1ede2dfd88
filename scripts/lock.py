"""The project's one lock file, requirements.lock, and the per-deployable files exported from it.

    .venv/bin/python scripts/lock.py            re-resolve pyproject.toml (needs the package index); keeps the
                                                current pins where they still fit, writes the lock and the exports
    .venv/bin/python scripts/lock.py --upgrade  the same, moving every pin to the newest release that fits
    .venv/bin/python scripts/lock.py --check    offline: the lock is in step with pyproject.toml and every export
                                                is what the lock gives (tests/test_dependencies.py runs this)
    .venv/bin/python scripts/lock.py export SET offline: print SET's requirements (streamer, functions, cli, dev)
    .venv/bin/python scripts/lock.py --lowest   print the resolution at every declared lower bound (needs the
                                                index), to install in a scratch venv and run the tests against

The lock is one universal resolution (every platform, Python >= 3.11) of the base dependencies and all extras, in
pip's requirements format with hashes and without download addresses. Each entry says which deployables need it
(`# sets:`), as uv resolved each extra against the lock's own pins. Who installs what:

    scripts/bootstrap.sh    the whole lock (the dev set), then the project itself without dependencies
    streamer/Dockerfile     streamer/requirements.txt: the `streamer` set (the data plane and common/)
    Functions remote build  requirements.txt at the root: the `functions` set (the control plane and common/)

Only the standard library here, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DEPLOYABLE_SETS = ("streamer", "functions", "cli")  # extras that ship somewhere; `dev` is the whole lock
EXPORTS = {"functions": ROOT / "requirements.txt", "streamer": ROOT / "streamer" / "requirements.txt"}
# How the lock is resolved; part of its inputs digest, so changing these also asks for a re-lock.
RESOLVE_ARGS = ("--universal", "--python-version", "3.11")

EXPORT_HEADERS = {
    "functions": (
        "The function app's dependencies: the control plane and common/ (pyproject.toml: the base list and the\n"
        "`functions` extra). The Functions remote build installs this file. Exported from requirements.lock by\n"
        "`python scripts/lock.py`; do not edit (tests/test_dependencies.py checks it is current)."
    ),
    "streamer": (
        "The streamer image's dependencies: the data plane and common/ (pyproject.toml: the base list and the\n"
        "`streamer` extra). streamer/Dockerfile installs this file. Exported from requirements.lock by\n"
        "`python scripts/lock.py`; do not edit (tests/test_dependencies.py checks it is current)."
    ),
}
LOCK_HEADER = (
    "The project's one lock file: every dependency of every deployable, pinned with hashes (pyproject.toml declares\n"
    "them; scripts/lock.py resolves and exports them; do not edit). `# sets:` names the deployables that install\n"
    "an entry: streamer (streamer/requirements.txt), functions (requirements.txt), cli; dev is all of it."
)

_REQ_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    name: str  # canonical
    version: str
    requirement: list[str]  # the requirement line and its --hash lines, as uv wrote them
    via: list[str]  # uv's annotation lines
    sets: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.version


def _blocks(text: str) -> list[list[str]]:
    """Requirement blocks: a requirement line, its continuation lines and the indented comments that follow."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or (line.startswith("#") and not line.startswith(" ")):
            continue
        if line.startswith(" "):
            if not blocks:
                raise ValueError(f"indented line before any requirement: {line!r}")
            blocks[-1].append(line)
        else:
            blocks.append([line])
    return blocks


def parse(text: str) -> list[Entry]:
    entries = []
    for block in _blocks(text):
        m = _REQ_LINE.match(block[0])
        if not m:
            raise ValueError(f"not a pinned requirement: {block[0]!r}")
        requirement = [ln for ln in block if not ln.lstrip().startswith("#")]
        comments = [ln for ln in block if ln.lstrip().startswith("#")]
        sets = tuple(ln.split(":", 1)[1].split() for ln in comments if ln.lstrip().startswith("# sets:"))
        entries.append(Entry(
            name=canonical(m["name"]), version=m["version"], requirement=requirement,
            via=[ln for ln in comments if not ln.lstrip().startswith("# sets:")],
            sets=tuple(sets[0]) if sets else (),
        ))
    return entries


def inputs_digest(pyproject: Path | None = None) -> str:
    """What the lock was resolved from: the declared dependencies and how they were resolved."""
    project = tomllib.loads((pyproject or ROOT / "pyproject.toml").read_text())["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "resolve": list(RESOLVE_ARGS),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _comment(text: str) -> str:
    return "".join(f"# {ln}".rstrip() + "\n" for ln in text.splitlines())


def render_lock(entries: list[Entry], digest: str) -> str:
    out = [_comment(LOCK_HEADER), f"# inputs-sha256: {digest}\n"]
    for e in entries:
        out.append("\n".join([*e.requirement, *e.via, f"    # sets: {' '.join(e.sets)}"]) + "\n")
    return "".join(out)


def lock_digest(text: str) -> str | None:
    m = re.search(r"^# inputs-sha256: ([0-9a-f]{64})$", text, re.M)
    return m.group(1) if m else None


def export(set_name: str, lock_text: str | None = None) -> str:
    """SET's requirements from the lock: its entries' requirement and hash lines, nothing else."""
    entries = parse(LOCK.read_text() if lock_text is None else lock_text)
    chosen = [e for e in entries if set_name == "dev" or set_name in e.sets]
    if not chosen:
        raise SystemExit(f"no entries for set {set_name!r} in {LOCK.name}")
    header = _comment(EXPORT_HEADERS.get(set_name, f"The `{set_name}` set, exported from requirements.lock."))
    return header + "".join("\n".join(e.requirement) + "\n" for e in chosen)


def check() -> list[str]:
    """Offline: what is out of date, as sentences (empty when all is current)."""
    problems = []
    if not LOCK.is_file():
        return [f"{LOCK.name} is missing: run `python scripts/lock.py`"]
    text = LOCK.read_text()
    if lock_digest(text) != inputs_digest():
        problems.append(f"{LOCK.name} was resolved from other declarations than pyproject.toml's: "
                        "run `python scripts/lock.py`")
    for set_name, path in EXPORTS.items():
        want = export(set_name, text)
        if not path.is_file() or path.read_text() != want:
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            problems.append(f"{shown} differs from what {LOCK.name} gives for `{set_name}`: "
                            "run `python scripts/lock.py`")
    return problems


# -- resolving (the only part that needs the package index) ------------------------------------------------------

def _uv(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--no-header", *RESOLVE_ARGS, *args],
                   cwd=ROOT, check=True)


def relock(upgrade: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        union = Path(tmp) / "union.txt"
        if LOCK.is_file() and not upgrade:
            shutil.copyfile(LOCK, union)  # uv keeps the pins of an existing output file where they still fit
        _uv("pyproject.toml", "--all-extras", "--generate-hashes", *(["--upgrade"] if upgrade else []),
            "-o", str(union))
        entries = parse(union.read_text())
        by_key = {e.key: e for e in entries}
        members: dict[tuple[str, str], list[str]] = {e.key: ["dev"] for e in entries}
        for set_name in DEPLOYABLE_SETS:
            subset = Path(tmp) / f"{set_name}.txt"
            _uv("pyproject.toml", "--extra", set_name, "--no-annotate", "-c", str(union), "-o", str(subset))
            for got in parse(subset.read_text()):
                full = by_key.get(got.key)
                if full is None:
                    raise SystemExit(f"{set_name}: {got.name}=={got.version} is not in the full resolution")
                if got.requirement[0].rstrip(" \\") != full.requirement[0].rstrip(" \\"):
                    # The lock records one marker per entry; a set that needs an entry under a narrower marker
                    # than the whole would install it where it is not needed.
                    raise SystemExit(f"{set_name}: {got.requirement[0]!r} has another marker than the lock's "
                                     f"{full.requirement[0]!r}; scripts/lock.py cannot record that yet")
                members[got.key].append(set_name)
        for e in entries:
            e.sets = tuple(members[e.key])
        text = render_lock(entries, inputs_digest())
        if "://" in text:
            raise SystemExit("the resolution recorded a download address; the lock must not name hosts")
        LOCK.write_text(text)
    for set_name, path in EXPORTS.items():
        path.write_text(export(set_name))
    print(f"wrote {LOCK.name} ({len(entries)} entries) and "
          + ", ".join(str(p.relative_to(ROOT)) for p in EXPORTS.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest release that fits")
    parser.add_argument("--lowest", action="store_true", help="print the resolution at the declared lower bounds")
    parser.add_argument("--check", action="store_true", help="offline: fail when the lock or an export is stale")
    sub = parser.add_subparsers(dest="command")
    exp = sub.add_parser("export", help="offline: print one set's requirements from the lock")
    exp.add_argument("set", choices=(*DEPLOYABLE_SETS, "dev"))
    args = parser.parse_args(argv)
    if args.command == "export":
        sys.stdout.write(export(args.set))
        return 0
    if args.lowest:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "lowest.txt"
            subprocess.run([sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--no-header", "--no-annotate",
                            "--python-version", "3.11", "--resolution", "lowest-direct", "pyproject.toml",
                            "--all-extras", "-o", str(out)], cwd=ROOT, check=True)
            sys.stdout.write(out.read_text())
        return 0
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    relock(args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
