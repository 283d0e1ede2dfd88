"""Speech-like audio for simulated calls: espeak-ng when installed, a WAV file, or synthesized — never downloaded.

A call's participants take turns (a conversation): each speaker's track holds their utterances at their turns and
exact zeros elsewhere, so unmixed streams have real silent frames while a participant is quiet and the mixed stream
is the sum. Different speakers get different voices (espeak voice/pitch, or synth pitch/formants) and different
text, so a receiver that mixes up participants produces audibly and byte-wise different output.

Everything is cached per (spec, rate, speakers, duration): the benchmark's many identical calls share one build.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import wav
from devstack.simulator.frames import EncodedTrack, mix_tracks, participant_fragment, samples_per_frame

log = logging.getLogger(__name__)

SOURCES = ("auto", "espeak", "synth", "wav")

DEFAULT_TEXTS: tuple[str, ...] = (
    "Hello, thanks for calling. This is a recorded line for quality and training. "
    "How can I help you today? I can look up your order, change the delivery date, or update your address.",
    "Hi, I ordered a blue kettle last Tuesday and it has not arrived yet. The tracking page says it left the "
    "warehouse on Friday. Could you check where it is? My order number is four seven one two.",
    "Just to add to that, we are away next week, so a delivery on Monday would be best. "
    "Is it possible to leave it with the neighbour at number twelve?",
    "Sure, let me check that for you. One moment please. Yes, I can see the parcel at the local depot, "
    "and I have moved the delivery to Monday morning.",
)
# espeak-ng voice variants per speaker (voice+variant, pitch 0-99, words per minute).
ESPEAK_VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us+m3", 40, 160), ("en-us+f3", 60, 170), ("en-gb+m2", 30, 150), ("en-us+f4", 70, 165))
# Synth voices: (f0 Hz, formant scale) — low male-ish to high female-ish.
SYNTH_VOICES: tuple[tuple[float, float], ...] = ((115.0, 1.0), (205.0, 1.17), (145.0, 1.06), (240.0, 1.22))
# (F1, F2, F3) Hz of a few vowels.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240),
           (660, 1720, 2410), (490, 1350, 1690))


@dataclass(frozen=True)
class AudioSpec:
    """Where a call's audio comes from.

    source: "auto" (espeak-ng if on PATH, else synth), "espeak", "synth" or "wav".
    wav_paths: for "wav", one file per speaker (cycled if fewer); any rate, mono or stereo, 16-bit.
    texts: for espeak, one paragraph per speaker (cycled); defaults to a short customer-service dialogue.
    silence_threshold: frames whose peak |sample| is at or below this are flagged silent and sent as zeros.
    """

    source: str = "auto"
    wav_paths: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    seed: int = 0
    silence_threshold: int = 48

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"audio source must be one of {SOURCES}, not {self.source!r}")
        if self.source == "wav" and not self.wav_paths:
            raise ValueError("audio source 'wav' needs wav_paths")

    def resolved_source(self) -> str:
        if self.source == "auto":
            return "espeak" if espeak_available() else "synth"
        return self.source


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


# -- resampling / IO ---------------------------------------------------------------------------------------------

def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling by FFT (no sox, no scipy). Fine for clips of seconds to minutes."""
    if src_rate == dst_rate or len(x) == 0:
        return x.astype(np.float64)
    n_out = round(len(x) * dst_rate / src_rate)
    spec = np.fft.rfft(x.astype(np.float64))
    keep = n_out // 2 + 1
    out_spec = np.zeros(keep, dtype=np.complex128)
    m = min(keep, len(spec))
    out_spec[:m] = spec[:m]
    return np.fft.irfft(out_spec, n_out) * (n_out / len(x))


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype("<i2")


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a 16-bit PCM WAV (mono or multi-channel, any rate) as mono s16 at `sample_rate`."""
    try:
        rate, channels, pcm = wav.read(Path(path).read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    data = np.frombuffer(pcm, dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return to_int16(resample(data.astype(np.float64), rate, sample_rate))


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    Path(path).write_bytes(wav.encode(np.asarray(samples, dtype="<i2").tobytes(), sample_rate))


@functools.lru_cache(maxsize=16)
def espeak(text: str, sample_rate: int, voice: str = "en-us", pitch: int = 50, wpm: int = 160) -> np.ndarray:
    """Speak `text` with espeak-ng into a temp WAV (its native 22050 Hz) and resample to `sample_rate`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng); use source 'synth'")
    with tempfile.TemporaryDirectory(prefix="acs-sim-espeak-") as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-p", str(pitch), "-s", str(wpm), "-w", str(out), text],
                       check=True, capture_output=True, timeout=60)
        return read_wav(out, sample_rate)


def split_utterances(x: np.ndarray, sample_rate: int, min_pause_s: float = 0.25, threshold: int = 200,
                     min_len_s: float = 0.4) -> list[np.ndarray]:
    """Cut speech at pauses of at least `min_pause_s` into utterances (clauses), trimming the silence around."""
    spf = samples_per_frame(sample_rate)
    n = len(x) // spf
    if n == 0:
        return []
    loud = np.abs(x[: n * spf].astype(np.int32)).reshape(n, spf).max(axis=1) > threshold
    pause_frames = max(1, int(min_pause_s * 50))
    pieces: list[np.ndarray] = []
    start = None
    quiet = 0
    for i, is_loud in enumerate(loud):
        if is_loud:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= pause_frames:
                pieces.append(x[start * spf:(i - quiet + 1) * spf])
                start, quiet = None, 0
    if start is not None:
        pieces.append(x[start * spf:(n - quiet) * spf])
    long_enough = [p for p in pieces if len(p) >= min_len_s * sample_rate]
    return long_enough or pieces


# -- synthesis ---------------------------------------------------------------------------------------------------

def _syllable(rng: np.random.Generator, sr: int, f0: float, scale: float) -> np.ndarray:
    """A consonant burst then a vowel: harmonics of a gliding f0 shaped by three formant resonances."""
    dur = rng.uniform(0.09, 0.22)
    n = int(dur * sr)
    t = np.arange(n) / sr
    f0_track = f0 * (1.0 + rng.uniform(-0.08, 0.08) + rng.uniform(-0.12, 0.05) * t / max(dur, 1e-3))
    phase = 2 * np.pi * np.cumsum(f0_track) / sr
    formants = np.array(_VOWELS[rng.integers(len(_VOWELS))], dtype=np.float64) * scale
    bandwidths = np.array([80.0, 110.0, 160.0])
    n_harm = int((sr / 2 - 200) // (f0 * 1.1))
    h = np.arange(1, n_harm + 1, dtype=np.float64)
    freqs = h * f0
    gains = (1.0 / (1.0 + ((freqs[:, None] - formants[None, :]) / bandwidths[None, :]) ** 2)).sum(axis=1)
    gains *= 1.0 / h ** 0.6  # glottal roll-off
    vowel = (gains[:, None] * np.sin(h[:, None] * phase[None, :])).sum(axis=0)
    env = np.ones(n)
    ramp = min(int(0.025 * sr), n // 2)
    if ramp > 0:
        win = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        env[:ramp] = win
        env[-ramp:] = win[::-1]
    vowel *= env / (np.abs(vowel).max() + 1e-9)
    if rng.random() < 0.6:  # an onset consonant: short band-limited noise
        cn = int(rng.uniform(0.02, 0.05) * sr)
        noise = rng.standard_normal(cn)
        noise = np.convolve(noise, np.ones(3) / 3, mode="same") * np.hanning(cn) * rng.uniform(0.15, 0.35)
        vowel = np.concatenate([noise, vowel])
    return vowel


def synth_utterance(rng: np.random.Generator, sample_rate: int, voice: int, seconds: float) -> np.ndarray:
    """Words of 1–3 syllables with short inter-word gaps, at a phrase-level loudness contour."""
    f0, scale = SYNTH_VOICES[voice % len(SYNTH_VOICES)]
    parts: list[np.ndarray] = []
    total = 0
    target = int(seconds * sample_rate)
    while total < target:
        for _ in range(int(rng.integers(1, 4))):
            s = _syllable(rng, sample_rate, f0, scale)
            parts.append(s)
            total += len(s)
        gap = np.zeros(int(rng.uniform(0.03, 0.11) * sample_rate))
        parts.append(gap)
        total += len(gap)
    x = np.concatenate(parts)[:target]
    contour = 0.55 + 0.45 * np.sin(np.linspace(0.2, np.pi - 0.2, len(x)))
    return to_int16(x * contour * 14000.0)


# -- conversations -----------------------------------------------------------------------------------------------

def _utterances(spec: AudioSpec, speaker: int, sample_rate: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    source = spec.resolved_source()
    if source == "wav":
        clip = read_wav(spec.wav_paths[speaker % len(spec.wav_paths)], sample_rate)
        while True:
            yield clip
    if source == "espeak":
        voice, pitch, wpm = ESPEAK_VOICES[speaker % len(ESPEAK_VOICES)]
        texts = spec.texts or DEFAULT_TEXTS
        try:
            speech = espeak(texts[speaker % len(texts)], sample_rate, voice, pitch, wpm)
            pieces = split_utterances(speech, sample_rate)
            if not pieces:
                raise RuntimeError("espeak-ng produced no audio")
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            if spec.source == "espeak":
                raise
            log.warning("espeak-ng failed (%s); using synthesized speech", exc)  # "auto": degrade, don't fail
            pieces = []
        while pieces:
            yield from pieces
    while True:
        yield synth_utterance(rng, sample_rate, speaker, float(rng.uniform(1.2, 3.2)))


def conversation(spec: AudioSpec, speakers: int, duration_s: float, sample_rate: int) -> list[np.ndarray]:
    """One s16 track per speaker, `duration_s` long: speakers take turns separated by 0.25–0.8 s pauses.

    Turn starts are frame-aligned, so the quiet parts of each track are whole frames of exact zeros. A turn is at
    most a quarter of the call (min 0.5 s), so even a 2-second call hears every speaker.
    """
    if speakers < 1:
        raise ValueError("a call needs at least one speaker")
    spf = samples_per_frame(sample_rate)
    total = max(1, round(duration_s * 50)) * spf
    rng = np.random.default_rng(spec.seed)
    sources = [_utterances(spec, i, sample_rate, np.random.default_rng([spec.seed, i])) for i in range(speakers)]
    tracks = np.zeros((speakers, total), dtype="<i2")
    pos = 10 * spf  # 200 ms of silence before anyone speaks
    speaker = 0
    max_turn = max(int(0.5 * sample_rate), total // 4)
    while pos < total:
        utt = next(sources[speaker])[:max_turn]
        end = min(pos + len(utt), total)
        tracks[speaker, pos:end] = utt[: end - pos]
        gap_frames = int(rng.integers(12, 41)) if total > 200 * spf else int(rng.integers(5, 12))
        pos = -(-end // spf) * spf + gap_frames * spf
        speaker = (speaker + 1) % speakers
    return [tracks[i] for i in range(speakers)]


@functools.lru_cache(maxsize=32)
def _encoded(spec: AudioSpec, speakers: int, sample_rate: int, duration_s: float,
             mixed: bool) -> tuple[EncodedTrack, ...]:
    raw = conversation(spec, speakers, duration_s, sample_rate)
    if mixed:
        return (EncodedTrack.from_samples(mix_tracks(raw), sample_rate, None, spec.silence_threshold),)
    return tuple(EncodedTrack.from_samples(samples, sample_rate, None, spec.silence_threshold) for samples in raw)


def build_tracks(spec: AudioSpec, participants: tuple[str, ...], sample_rate: int, duration_s: float,
                 mixed: bool, mixed_participant: str | None = None) -> tuple[EncodedTrack, ...]:
    """The encoded tracks a call streams: one per participant (unmixed) or one mix (mixed, with
    `mixed_participant` as its participantRawID, or none).

    The audio is built and encoded once per (spec, speaker count, rate, length, mixed) and shared; only the
    participant ids differ between calls, so hundreds of benchmark calls cost one build.
    """
    shared = _encoded(spec, len(participants), sample_rate, float(duration_s), mixed)
    if mixed:
        return (_named(shared[0], mixed_participant),)
    return tuple(_named(track, pid) for track, pid in zip(shared, participants, strict=True))


def _named(track: EncodedTrack, participant_raw_id: str | None) -> EncodedTrack:
    return dataclasses.replace(track, participant_raw_id=participant_raw_id,
                               participant_json=participant_fragment(participant_raw_id))


def describe(tracks: Sequence[EncodedTrack]) -> list[dict[str, object]]:
    return [{"participantRawID": t.participant_raw_id, "frames": len(t), "silentFrames": sum(t.silent)}
            for t in tracks]
