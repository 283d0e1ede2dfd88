"""The per-call manifest: what was recorded, where it is, and whether it is complete.

Several writers can touch one call's manifest: a streaming session per WebSocket connection (stop/start makes a
new one, possibly on another replica) and the spool drainer after a restart. Each writer keeps its own *part* — a
manifest-shaped dict holding only what it contributed — and merges it into the stored manifest with an
ETag-conditional write. `merge` is a union keyed by identity, so it is idempotent and order-independent: replaying
a part, or two writers racing, never loses an entry.

Shape (JSON, camelCase; see README "Blob layout and manifest"):

    {"schemaVersion": 1, "callConnectionId": str, "correlationId": str|None, "sampleRate": int,
     "frameBytes": int, "chunkSeconds": float, "clockOrigin": ISO-8601|None, "audioChannel": "mixed"|"unmixed"|"auto",
     "complete": bool, "updatedAt": ISO-8601, "dtmfDropped"?: int,
     "sessions": [{"id", "startedAt", "endedAt", "complete", "cleanClose", "closeCode", "endReason", "replica",
                   counters ("frames", "badFrames", "conflictFrames", ...), "quarantinedChunks", ...}],
     "streams": [{"stream", "participantRawId", "chunks": [{"blob", "seq", "startTime", "durationMs",
                                                            "sha256", "bytes", "revision", "sessionId"}]}],
     "gaps": [{"stream", "startTime", "durationMs", "sessionId"}],
     "dtmf": [{"tone", "timestamp", "participantRawId", "receivedAt"}]}

The first write of `clockOrigin`, `sampleRate`, `chunkSeconds` wins: a new call's first session claims the clock
by creating the manifest, and every later session adopts it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict

import orjson

SCHEMA_VERSION = 1


class ChunkEntry(TypedDict):
    blob: str
    seq: int
    startTime: str
    durationMs: int
    sha256: str
    bytes: int
    revision: int
    sessionId: str


class StreamEntry(TypedDict):
    stream: str
    participantRawId: str | None
    chunks: list[ChunkEntry]


class GapEntry(TypedDict):
    stream: str
    startTime: str
    durationMs: int


class DtmfEntry(TypedDict):
    tone: str
    timestamp: str | None
    participantRawId: str | None
    receivedAt: str


def utc_iso(ts: float) -> str:
    """ISO-8601 UTC rounded to the millisecond, with a `Z`: the form ACS uses in frame timestamps."""
    ms = round(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_iso(value: str) -> float:
    """Inverse of `utc_iso` (accepts any ISO-8601; naive means UTC)."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def now_iso() -> str:
    return utc_iso(datetime.now(UTC).timestamp())


def empty(call_id: str) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION,
        "callConnectionId": call_id,
        "correlationId": None,
        "sampleRate": None,
        "frameBytes": None,
        "chunkSeconds": None,
        "clockOrigin": None,
        "audioChannel": None,
        "complete": False,
        "updatedAt": None,
        "sessions": [],
        "streams": [],
        "gaps": [],
        "dtmf": [],
    }


_FIRST_WINS = ("correlationId", "sampleRate", "frameBytes", "chunkSeconds", "clockOrigin", "audioChannel")
MAX_DTMF_PER_CALL = 5000  # backstop over every session's own cap; what is cut is counted in `dtmfDropped`
MAX_GAPS_PER_CALL = 10000  # likewise for gap entries (`gapsDropped`); a session's gapFrames still counts them all


def merge_session(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """One session's entry, merged so that it only moves forward whatever order its parts arrive in: flags only
    turn true (`complete`, `cleanClose`), counters only grow, a value once set is kept (`endedAt`, `closeCode`,
    `endReason`), lists keep the longer version. A stale or replayed part can therefore never reopen a session."""
    if not old:
        return new
    out = dict(old)
    for key, value in new.items():
        if value is None:
            continue
        cur = out.get(key)
        if cur is None:
            out[key] = value
        elif isinstance(value, bool):
            out[key] = bool(cur) or value
        elif isinstance(value, int) and isinstance(cur, int):
            out[key] = max(cur, value)
        elif isinstance(value, list) and isinstance(cur, list) and len(value) > len(cur):
            out[key] = value
    return out


def has_content(session: dict[str, Any]) -> bool:
    """A session that received audio. Sessions without audio (empty, or tones only) do not decide completeness."""
    return bool(session.get("frames"))


def merge(base: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Union of `part` into `base` (neither is modified). Identity keys: session id (merged by `merge_session`);
    (stream, seq) for chunks, where the higher `revision` wins (a chunk whose empty slots a later part filled
    supersedes the first write; equal revisions keep the entry already there); (stream, startTime) for gaps;
    (timestamp, tone, participant) for DTMF.

    `complete` is true when at least one session carried audio and every such session is complete.

    Copy-on-write: every list and stream object is rebuilt, but the entries themselves (chunks, sessions, gaps,
    tones) are shared with the inputs and treated as immutable. A streamer rewrites the manifest after every
    chunk, so a deep copy would make each write of an hour-long call cost ~5x more."""
    call_id = part["callConnectionId"]
    out = dict(base) if base else empty(call_id)
    if out["callConnectionId"] != call_id:
        raise ValueError(f"manifest of {out['callConnectionId']!r} cannot take a part of {call_id!r}")
    for key in _FIRST_WINS:
        if out.get(key) is None and part.get(key) is not None:
            out[key] = part[key]

    sessions = {s["id"]: s for s in out["sessions"]}
    for s in part.get("sessions", []):
        sessions[s["id"]] = merge_session(sessions.get(s["id"]), s)
    out["sessions"] = sorted(sessions.values(), key=lambda s: (s.get("startedAt") or "", s["id"]))

    streams: dict[str, dict[str, Any]] = {s["stream"]: s for s in out["streams"]}
    for ps in part.get("streams", []):
        cur = streams.get(ps["stream"])
        target = streams[ps["stream"]] = dict(cur) if cur is not None else {
            "stream": ps["stream"], "participantRawId": ps.get("participantRawId"), "chunks": []}
        by_seq = {c["seq"]: c for c in target["chunks"]}
        for c in ps.get("chunks", []):
            old = by_seq.get(c["seq"])
            if old is None or c.get("revision", 1) > old.get("revision", 1):
                by_seq[c["seq"]] = c
        target["chunks"] = [by_seq[k] for k in sorted(by_seq)]
    out["streams"] = sorted(streams.values(), key=lambda s: s["stream"])

    # A session's part carries its whole current gap list (`gapsOf`): late frames may have filled a gap since.
    replaced = set(part.get("gapsOf") or ())
    gaps = {(g["stream"], g["startTime"]): g for g in out["gaps"] if g.get("sessionId") not in replaced}
    gaps.update({(g["stream"], g["startTime"]): g for g in part.get("gaps", [])})
    gap_keys = sorted(gaps)
    if len(gap_keys) > MAX_GAPS_PER_CALL:
        out["gapsDropped"] = max(out.get("gapsDropped") or 0, len(gap_keys) - MAX_GAPS_PER_CALL)
        gap_keys = gap_keys[:MAX_GAPS_PER_CALL]
    out["gaps"] = [gaps[k] for k in gap_keys]

    def dtmf_key(d: dict[str, Any]) -> tuple[str, str, str]:
        return (d.get("timestamp") or "", d["tone"], d.get("participantRawId") or "")

    dtmf = {dtmf_key(d): d for d in out["dtmf"]}
    dtmf.update({dtmf_key(d): d for d in part.get("dtmf", [])})
    keys = sorted(dtmf)
    if len(keys) > MAX_DTMF_PER_CALL:
        out["dtmfDropped"] = max(out.get("dtmfDropped") or 0, len(keys) - MAX_DTMF_PER_CALL)
        keys = keys[:MAX_DTMF_PER_CALL]
    out["dtmf"] = [dtmf[k] for k in keys]

    counted = [s for s in out["sessions"] if has_content(s)]
    out["complete"] = bool(counted) and all(s.get("complete") for s in counted)
    out["updatedAt"] = now_iso()
    return out


def dumps(manifest: dict[str, Any]) -> bytes:
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)


def loads(data: bytes | str) -> dict[str, Any]:
    """Parse and shape-check a stored manifest; raises ValueError on anything that is not one."""
    try:
        m = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"manifest is not JSON: {exc}") from exc
    if not isinstance(m, dict) or not isinstance(m.get("callConnectionId"), str):
        raise ValueError("manifest lacks callConnectionId")
    for key in ("sessions", "streams", "gaps", "dtmf"):
        if not isinstance(m.get(key, []), list):
            raise ValueError(f"manifest field {key!r} is not a list")
        m.setdefault(key, [])
    # The call clock decides where every later session's audio goes: it must be usable, or not there at all.
    for key in ("sampleRate", "frameBytes"):
        if m.get(key) is not None and (type(m[key]) is not int or m[key] <= 0):
            raise ValueError(f"manifest field {key!r} is not a positive integer")
    seconds = m.get("chunkSeconds")
    if seconds is not None and (type(seconds) not in (int, float) or not 0 < seconds <= 3600):
        raise ValueError("manifest field 'chunkSeconds' is not a positive number of seconds")
    if m.get("clockOrigin") is not None:
        try:
            parse_iso(m["clockOrigin"])
        except (TypeError, ValueError):
            raise ValueError(f"manifest field 'clockOrigin' is not a time: {str(m['clockOrigin'])[:40]!r}") from None
    return m


def stream_entry(manifest: dict[str, Any], stream: str) -> dict[str, Any] | None:
    return next((s for s in manifest.get("streams", []) if s["stream"] == stream), None)
