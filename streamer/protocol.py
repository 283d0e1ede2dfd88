"""ACS media-streaming frames (docs/acs-protocol.md#websocket-messages): the only module that knows their fields.

One `orjson.loads` per frame; base64 is decoded strictly with `pybase64` (SIMD: 0.6 µs per 20-ms frame against
binascii's 2.6, the largest single cost on the frame path); timestamps go through a cache
keyed on the minute prefix, because consecutive frames share it and `fromisoformat` is the costly part.
"""

from __future__ import annotations

import binascii
from datetime import UTC, datetime
from typing import Any

import orjson
import pybase64
from websockets.frames import CloseCode

from common.layout import MAX_PARTICIPANT_ID

AUDIO_DATA = "AudioData"
AUDIO_METADATA = "AudioMetadata"
DTMF_DATA = "DtmfData"

MIN_RATE, MAX_RATE = 8000, 48000
_b64decode = pybase64.b64decode


class FrameError(ValueError):
    """A frame we cannot use. `kind` names the counter; `fatal` means the socket must close with `close_code`."""

    def __init__(self, kind: str, message: str, *, fatal: bool = False, close_code: int = CloseCode.INVALID_DATA):
        super().__init__(message)
        self.kind = kind
        self.fatal = fatal
        self.close_code = close_code


class AudioFormat:
    __slots__ = ("channels", "encoding", "frame_bytes", "sample_rate", "subscription_id")

    def __init__(self, subscription_id: str | None, encoding: str, sample_rate: int, channels: int,
                 frame_bytes: int):
        self.subscription_id = subscription_id
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_bytes = frame_bytes

    @property
    def frame_samples(self) -> int:
        return self.frame_bytes // 2

    @property
    def frame_seconds(self) -> float:
        return self.frame_samples / self.sample_rate

    def same_as(self, other: AudioFormat) -> bool:
        return (self.encoding, self.sample_rate, self.channels, self.frame_bytes) == (
            other.encoding, other.sample_rate, other.channels, other.frame_bytes)


def parse(raw: str | bytes) -> tuple[str, dict[str, Any]]:
    """-> (kind, message). One orjson parse; raises FrameError for non-JSON, non-objects and a missing kind."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError("malformed_json", f"not JSON: {exc}") from None
    if type(msg) is not dict:
        raise FrameError("wrong_type", "frame is not a JSON object")
    kind = msg.get("kind")
    if type(kind) is not str:
        raise FrameError("wrong_type", "frame has no string 'kind'")
    return kind, msg


def audio_metadata(msg: dict[str, Any], max_frame_bytes: int) -> AudioFormat:
    md = msg.get("audioMetadata")
    if not isinstance(md, dict):
        raise FrameError("wrong_type", "AudioMetadata without an 'audioMetadata' object", fatal=True,
                         close_code=CloseCode.INVALID_DATA)
    encoding = md.get("encoding", "PCM")
    rate = md.get("sampleRate")
    channels = md.get("channels", 1)
    length = md.get("length")
    sub = md.get("subscriptionId")
    if not isinstance(encoding, str) or encoding.upper() != "PCM":
        raise FrameError("unsupported_format", f"unsupported encoding {encoding!r}", fatal=True,
                         close_code=CloseCode.UNSUPPORTED_DATA)
    if type(rate) is not int or not MIN_RATE <= rate <= MAX_RATE:
        raise FrameError("unsupported_format", f"unsupported sampleRate {rate!r}", fatal=True,
                         close_code=CloseCode.UNSUPPORTED_DATA)
    if channels != 1:
        raise FrameError("unsupported_format", f"unsupported channels {channels!r}", fatal=True,
                         close_code=CloseCode.UNSUPPORTED_DATA)
    if length is None:
        length = rate // 50 * 2  # 20 ms, the documented packet size
    if type(length) is not int or length <= 0 or length % 2 or length > max_frame_bytes:
        raise FrameError("unsupported_format", f"unsupported frame length {length!r}", fatal=True,
                         close_code=CloseCode.UNSUPPORTED_DATA)
    return AudioFormat(sub if isinstance(sub, str) else None, "PCM", rate, 1, length)


def audio_data(msg: dict[str, Any]) -> tuple[bytes, str | None, str | None, bool]:
    """-> (pcm, timestamp, participantRawID, silent). Raises FrameError for anything malformed."""
    ad = msg.get("audioData")
    if type(ad) is not dict:
        raise FrameError("wrong_type", "AudioData without an 'audioData' object")
    data = ad.get("data")
    if type(data) is not str:
        raise FrameError("wrong_type", "audioData.data is not a string")
    try:
        pcm = _b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError("bad_base64", "audioData.data is not valid base64") from None
    if len(pcm) & 1:
        raise FrameError("odd_length", f"audio payload has an odd byte count ({len(pcm)})")
    ts = ad.get("timestamp")
    participant = ad.get("participantRawID")
    silent = ad.get("silent", False)
    if not ((ts is None or type(ts) is str) and (participant is None or type(participant) is str)
            and type(silent) is bool):
        raise FrameError("wrong_type", "audioData.timestamp/participantRawID must be strings, silent a boolean")
    return pcm, ts, participant or None, silent  # its length is bounded where a stream is created (timeline)


DTMF_TONES = frozenset("0123456789*#ABCD")
MAX_DTMF_TONES = 16  # characters per DtmfData message (ACS sends one; a short run is tolerated)


def dtmf_data(msg: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """-> (tones, timestamp, participantRawID). Only DTMF tones are stored: anything else is a bad frame, so a
    peer cannot park arbitrary text in the manifest."""
    dd = msg.get("dtmfData")
    if not isinstance(dd, dict) or not isinstance(dd.get("data"), str) or not dd["data"]:
        raise FrameError("wrong_type", "DtmfData without a 'dtmfData.data' string")
    tones = dd["data"].upper()
    if len(tones) > MAX_DTMF_TONES or not DTMF_TONES.issuperset(tones):
        raise FrameError("bad_dtmf", f"dtmfData.data {tones[:20]!r} is not 1-{MAX_DTMF_TONES} of 0-9 * # A-D")
    ts = dd.get("timestamp")
    participant = dd.get("participantRawID")
    if not isinstance(participant, str) or not participant or len(participant) > MAX_PARTICIPANT_ID:
        participant = None
    return tones, ts if isinstance(ts, str) else None, participant


# Timestamps outside [2000, 2100) are not a live call's: treated as unparseable, so no clock can overflow.
_EARLIEST, _LATEST = 946684800.0, 4102444800.0


class TimestampParser:
    """ISO-8601 → epoch seconds, fast for ACS's `YYYY-MM-DDTHH:MM:SS.fffZ` shape, correct for any ISO form."""

    __slots__ = ("_base", "_prefix")

    def __init__(self) -> None:
        self._prefix = "\0"  # matches no timestamp the fast path could index out of range (not even "")
        self._base = 0.0

    def __call__(self, ts: str) -> float:
        if ts[:16] == self._prefix and ts[-1] == "Z" and ts[16] == ":":  # the minute of the previous frame
            try:
                t = self._base + float(ts[17:-1])
            except ValueError:
                t = self._parse(ts)
        else:
            t = self._parse(ts)
        if not _EARLIEST <= t < _LATEST:
            raise FrameError("bad_timestamp", f"timestamp out of range {ts[:40]!r}")
        return t

    def _parse(self, ts: str) -> float:
        if len(ts) >= 20 and ts[-1] == "Z" and ts[16] == ":" and ts[10] == "T":
            prefix = ts[:16]
            try:
                base = datetime.fromisoformat(prefix + ":00+00:00").timestamp()
                t = base + float(ts[17:-1])
                self._prefix, self._base = prefix, base
                return t
            except ValueError:
                pass  # not the common shape after all (or not a date): the general path decides
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            raise FrameError("bad_timestamp", f"unparseable timestamp {ts[:40]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
