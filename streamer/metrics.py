"""Process-wide counters, exported through prometheus_client at /metrics.

The frame path only does `metrics.frames += 1` on a plain dataclass: a prometheus_client Counter takes a lock per
increment. A custom collector turns the plain numbers into metric families when /metrics is scraped, and adds
the per-stream anomaly counts (late, duplicate, gap, bad-timestamp, drift) of sessions still running, so a long
call's trouble shows while it runs rather than when it ends.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.timeline import TimelineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# attribute -> (exported name, type, help)
_PLAIN = {
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
    "slot_conflicts": ("acs_streamer_slot_conflicts_total", "counter",
                       "Frame slots a later write also held with other audio: the stored audio was kept"),
    "chunks_quarantined": ("acs_streamer_chunks_quarantined_total", "counter",
                           "Chunks that can never land as they are (kept in the spool's _quarantine folder)"),
    "sessions_without_audio": ("acs_streamer_sessions_without_audio_total", "counter",
                               "Sessions that ended without audio or tones (nothing recorded for them)"),
    "finishing_sessions": ("acs_streamer_finishing_sessions", "gauge",
                           "Closed sessions whose chunks or final manifest write have not landed yet"),
}
# TimelineStats attribute -> (exported name, help): ended sessions' totals plus the running sessions' counts
_STREAM = {
    "late_dropped": ("acs_streamer_late_frames_total", "Frames dropped as too late"),
    "duplicates": ("acs_streamer_duplicate_frames_total", "Frames dropped as duplicates"),
    "gap_slots": ("acs_streamer_gap_frames_total", "Missing frames filled with silence"),
    "bad_timestamps": ("acs_streamer_bad_timestamp_frames_total",
                       "Frames whose timestamp could not be trusted (placed after the previous frame)"),
    "drift_corrections": ("acs_streamer_drift_corrections_total",
                          "Frames placed at the cursor although their timestamp ran slow (clock drift)"),
    "late_placed": ("acs_streamer_late_frames_placed_total", "Late frames written into their open slot"),
}


class Histogram:
    """Cumulative-bucket histogram in Prometheus' shape, as plain numbers (observed off the frame path)."""

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

    def family(self, name: str, text: str) -> HistogramMetricFamily:
        acc, buckets = 0, []
        for le, c in zip((*map(str, self.BUCKETS), "+Inf"), self.counts, strict=True):
            acc += c
            buckets.append((le, acc))
        return HistogramMetricFamily(name, text, buckets=buckets, sum_value=self.total)


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
    slot_conflicts: int = 0
    chunks_quarantined: int = 0
    sessions_without_audio: int = 0
    finishing_sessions: int = 0
    storage_requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, what) -> requests sent
    ended_streams: Counter[str] = field(default_factory=Counter)  # TimelineStats totals of ended sessions
    bad_frames: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    chunk_latency: Histogram = field(default_factory=Histogram)
    live_streams: Callable[[], Iterable[TimelineStats]] = field(default=lambda: (), repr=False)
    loop_lag: Callable[[], tuple[float, float]] = field(default=lambda: (0.0, 0.0), repr=False)  # (now, worst)

    def session_ended(self, stats: TimelineStats) -> None:
        for key in _STREAM:
            self.ended_streams[key] += getattr(stats, key)

    def retried(self, what: str, _attempt: int, _exc: BaseException) -> None:
        """The retry policy's hook (common.retry.Backoff.on_retry)."""
        self.retries[what] += 1

    def render(self) -> bytes:
        return generate_latest(self._registry)

    def __post_init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)  # one per Metrics: the collector reads it live
        self._registry.register(_Collector(self))


class _Collector(Collector):
    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        for attr, (name, kind, text) in _PLAIN.items():
            if kind == "counter":
                yield CounterMetricFamily(name, text, value=getattr(m, attr))
            else:
                yield GaugeMetricFamily(name, text, value=getattr(m, attr))
        live = list(m.live_streams())
        for attr, (name, text) in _STREAM.items():
            yield CounterMetricFamily(name, text, value=m.ended_streams[attr] + sum(getattr(s, attr) for s in live))
        for name, text, label, counts in (
            ("acs_streamer_bad_frames_total", "Frames rejected, by reason", "reason", m.bad_frames),
            ("acs_streamer_refusals_total", "Refused upgrades, by reason", "reason", m.refusals),
            ("acs_streamer_retries_total", "Storage operations retried, by operation", "operation", m.retries),
        ):
            labelled = CounterMetricFamily(name, text, labels=[label])
            for key, value in sorted(counts.items()):
                labelled.add_metric([key], value)
            yield labelled
        requests = CounterMetricFamily("acs_streamer_storage_requests",
                                       "Requests sent to Blob and Queue Storage, by HTTP method and what they touch",
                                       labels=["method", "what"])
        for (method, what), value in sorted(m.storage_requests.items()):
            requests.add_metric([method, what], value)
        yield requests
        yield m.chunk_latency.family("acs_streamer_chunk_latency_seconds",
                                     "Seconds from a chunk's last frame arriving to the chunk landing")
        lag, worst = m.loop_lag()
        yield GaugeMetricFamily("acs_streamer_loop_lag_seconds",
                                "How late the event loop ran in the last second, one stall aside: the overload signal",
                                value=lag)
        yield GaugeMetricFamily("acs_streamer_loop_lag_max_seconds", "Worst event-loop lateness since start",
                                value=worst)
        yield GaugeMetricFamily("acs_streamer_chunk_latency_max_seconds", "Worst chunk latency since start",
                                value=m.chunk_latency.max)
