"""JSON Schemas of the contract, generated from the models: `python -m common.schema` writes them into
docs/schema/, `--check` fails when a committed schema is not what the models say (CI runs it via the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from common.call_state import CallState
from common.manifest import Manifest
from common.recording import PeaksDocument, Recording, RecordingDocument, RecordingReadyData

DOCS = Path(__file__).resolve().parent.parent / "docs" / "schema"
MODELS: dict[str, type] = {"manifest": Manifest, "call-state": CallState, "recording": RecordingDocument,
                           "recording-stored": Recording, "recording-ready-event": RecordingReadyData,
                           "peaks": PeaksDocument}


def render(model: type) -> bytes:
    schema = msgspec.json.schema(model)
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def stale() -> list[str]:
    """Schema files that differ from the models (or are missing)."""
    out = []
    for name, model in MODELS.items():
        path = DOCS / f"{name}.schema.json"
        if not path.exists() or path.read_bytes() != render(model):
            out.append(str(path))
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        for path in bad:
            print(f"stale: {path} (run python -m common.schema)", file=sys.stderr)
        return 1 if bad else 0
    DOCS.mkdir(parents=True, exist_ok=True)
    for name, model in MODELS.items():
        (DOCS / f"{name}.schema.json").write_bytes(render(model))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
