"""Process-wide counters, rendered as Prometheus text at /metrics. Plain ints: the frame path only does `+= 1`."""

from __future__ import annotations

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
}


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
    bad_frames: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)

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
        return "\n".join(lines) + "\n"
