"""Process-wide counters, rendered as Prometheus text at /metrics. Plain ints: the frame path only does `+= 1`."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field, fields

_HELP = {
    "frames": ("acs_streamer_frames_total", "counter", "AudioData frames received"),
    "audio_bytes": ("acs_streamer_audio_bytes_total", "counter", "PCM bytes received"),
    "messages": ("acs_streamer_messages_total", "counter", "WebSocket messages received"),
    "dtmf": ("acs_streamer_dtmf_total", "counter", "DTMF tones received"),
    "ignored": ("acs_streamer_ignored_messages_total", "counter", "Transcription and unknown kinds ignored"),
    "chunks_sealed": ("acs_streamer_chunks_sealed_total", "counter", "WAV chunks cut"),
    "chunks_uploaded": ("acs_streamer_chunks_uploaded_total", "counter", "WAV chunk writes that landed"),
    "chunks_merged": ("acs_streamer_chunks_merged_total", "counter", "Chunk writes merged into an existing blob"),
    "upload_retries": ("acs_streamer_upload_retries_total", "counter", "Failed storage writes that were retried"),
    "chunks_spooled": ("acs_streamer_chunks_spooled_total", "counter", "Chunks written to the disk spool"),
    "spool_failures": ("acs_streamer_spool_failures_total", "counter",
                       "Chunks that could not be spooled (kept in memory; audio at risk)"),
    "manifest_writes": ("acs_streamer_manifest_writes_total", "counter", "Manifest updates that landed"),
    "sessions_started": ("acs_streamer_sessions_total", "counter", "WebSocket sessions accepted"),
    "sessions_refused": ("acs_streamer_sessions_refused_total", "counter", "Upgrades refused (auth, cap, drain)"),
    "active_calls": ("acs_streamer_active_calls", "gauge", "Open WebSocket sessions"),
    "pending_upload_bytes": ("acs_streamer_pending_upload_bytes", "gauge", "Chunk bytes waiting in memory"),
    "pending_chunks": ("acs_streamer_pending_chunks", "gauge", "Chunks waiting to land (memory + spool)"),
    "late_frames": ("acs_streamer_late_frames_total", "counter", "Frames dropped as too late"),
    "duplicate_frames": ("acs_streamer_duplicate_frames_total", "counter", "Frames dropped as duplicates"),
    "gap_frames": ("acs_streamer_gap_frames_total", "counter", "Missing frames filled with silence"),
    "slot_conflicts": ("acs_streamer_slot_conflicts_total", "counter",
                       "Frame slots a later write also held with other audio: the stored audio was kept"),
    "chunks_quarantined": ("acs_streamer_chunks_quarantined_total", "counter",
                           "Chunks that can never land as they are (kept in the spool's _quarantine folder)"),
    "sessions_without_audio": ("acs_streamer_sessions_without_audio_total", "counter",
                               "Sessions that ended without audio or tones (nothing recorded for them)"),
}


class Histogram:
    """Cumulative-bucket histogram in Prometheus' shape."""

    BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS) + 1)
        self.total = 0.0
        self.n = 0
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.BUCKETS, value)] += 1
        self.total += value
        self.n += 1
        self.max = max(self.max, value)

    def render(self, name: str, text: str) -> list[str]:
        lines = [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
        acc = 0
        for le, c in zip((*map(str, self.BUCKETS), "+Inf"), self.counts, strict=True):
            acc += c
            lines.append(f'{name}_bucket{{le="{le}"}} {acc}')
        return [*lines, f"{name}_sum {self.total}", f"{name}_count {self.n}"]


@dataclass
class Metrics:
    frames: int = 0
    audio_bytes: int = 0
    messages: int = 0
    dtmf: int = 0
    ignored: int = 0
    chunks_sealed: int = 0
    chunks_uploaded: int = 0
    chunks_merged: int = 0
    upload_retries: int = 0
    chunks_spooled: int = 0
    spool_failures: int = 0
    manifest_writes: int = 0
    sessions_started: int = 0
    sessions_refused: int = 0
    active_calls: int = 0
    pending_upload_bytes: int = 0
    pending_chunks: int = 0
    late_frames: int = 0
    duplicate_frames: int = 0
    gap_frames: int = 0
    slot_conflicts: int = 0
    chunks_quarantined: int = 0
    sessions_without_audio: int = 0
    bad_frames: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    chunk_latency: Histogram = field(default_factory=Histogram)

    def render(self) -> str:
        lines = []
        for f in fields(self):
            if f.name in _HELP:
                name, kind, text = _HELP[f.name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {getattr(self, f.name)}"]
        lines += ["# HELP acs_streamer_bad_frames_total Frames rejected, by reason",
                  "# TYPE acs_streamer_bad_frames_total counter"]
        lines += [f'acs_streamer_bad_frames_total{{reason="{k}"}} {v}' for k, v in sorted(self.bad_frames.items())]
        lines += ["# HELP acs_streamer_refusals_total Refused upgrades, by reason",
                  "# TYPE acs_streamer_refusals_total counter"]
        lines += [f'acs_streamer_refusals_total{{reason="{k}"}} {v}' for k, v in sorted(self.refusals.items())]
        lines += self.chunk_latency.render("acs_streamer_chunk_latency_seconds",
                                           "Seconds from a chunk's last frame arriving to the chunk landing")
        lines += ["# HELP acs_streamer_chunk_latency_max_seconds Worst chunk latency since start",
                  "# TYPE acs_streamer_chunk_latency_max_seconds gauge",
                  f"acs_streamer_chunk_latency_max_seconds {self.chunk_latency.max}"]
        return "\n".join(lines) + "\n"
