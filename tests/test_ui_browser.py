"""The recordings page in a real browser (Debian's Chromium, headless, driven by Playwright) against the real local
stack: the demo's two calls placed through the real function code and the real Call Automation SDK, streamed by
the ACS simulator to the streamer, stored in Azurite and served by the local functions host.

Checks what a person checks: the list shows both calls; the unmixed call has one lane per participant and what each
lane draws matches the audio (loud where that participant spoke, flat where they were silent, column by column
against the stitched WAV); the DTMF marker sits at the tone's time; a live call's lanes grow while it streams;
playback starts (the Web Audio player's clock and the finished file's audio element both advance); a wrong key is
refused with a clear message, and the key never appears in a URL. Screenshots go to `.artifacts/ui/`
(UPDATE_README_SCREENSHOT=1 also copies the call's into docs/images/ for the README).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from common import wav
from common.manifest import parse_iso
from devstack.demo import CALLER, DEMO_DTMF, OUTBOUND_TARGET, place_demo_calls
from devstack.simulator import CallScript
from devstack.stack import LocalStack
from recorder_cli.client import RecorderClient

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(__file__).resolve().parent.parent / ".artifacts" / "ui"
README_SHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "recordings-page.png"
SECONDS = 12.0
AUDIO_RGB_MAX_R, AUDIO_RGB_MAX_G, AUDIO_RGB_MIN_B = 90, 140, 150  # the lanes' audio colour, #1f5fbf

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo's two calls (as devstack.demo places them), recorded and finalized; the stack stays up."""
    with LocalStack(workdir=tmp_path_factory.mktemp("ui-stack"), pace=1.0, chunk_seconds=2.0,
                    default_script=CallScript(duration_s=SECONDS, speakers=2)) as stack:
        client = RecorderClient(stack.functions_url, stack.function_key)
        calls = place_demo_calls(stack, client, SECONDS)
        deadline = time.monotonic() + SECONDS + 90
        for cid in calls.values():
            while client.recording(cid)["status"] != "ready":
                assert time.monotonic() < deadline, f"{cid} was not finalized"
                time.sleep(0.5)
        yield {"stack": stack, "client": client, **calls}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def context(playwright: Playwright) -> Iterator[BrowserContext]:
    """Debian's Chromium with a fresh profile (--user-data-dir) per test: nothing carries over."""
    profile = tempfile.mkdtemp(prefix="ui-profile-")
    ctx = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS, viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    expected = ("status of 401", "status of 416")  # a refused key; the player reaching past the landed audio
    ctx.on("console", lambda m: problems.append(m.text)
           if m.type == "error" and not any(e in m.text for e in expected) else None)
    ctx.on("weberror", lambda e: problems.append(str(e.error)))
    try:
        yield ctx
    finally:
        ctx.close()
        shutil.rmtree(profile, ignore_errors=True)
    assert not problems, problems  # no script error, no Content-Security-Policy violation


def wait_until(page: Page, predicate: str, timeout: float = 15.0) -> None:
    """Polls `predicate` (a JavaScript arrow function) until it is true. Playwright's wait_for_function evaluates
    strings, which the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses; evaluate() does not."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.1)


def shot(page: Page, name: str, full: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    return path


def sign_in(page: Page, demo: dict[str, Any]) -> list[str]:
    """Opens the page and enters the key; returns the list every request URL is appended to."""
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(f"{demo['stack'].functions_url}/api/ui")
    page.fill("#key", demo["stack"].function_key)
    page.click("#keyform button[type=submit]")
    page.wait_for_selector("#calls tbody tr")
    return urls


def open_call(page: Page, call_id: str) -> None:
    page.click(f"#calls tr[data-call='{call_id}'] a")
    page.wait_for_selector("#lanes .lane canvas")
    wait_until(page, "() => document.querySelector('#scrub').getAttribute('aria-valuemax') > 1")


def audio_columns(page: Page, stream: str) -> dict[str, Any]:
    """How many pixels of each canvas column are drawn in the audio colour, and the timeline's span."""
    return page.evaluate("""([stream, r, g, b]) => {
        const c = document.querySelector(`.lane[data-stream="${stream}"] canvas`);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const cols = new Array(c.width).fill(0);
        for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
            const i = 4 * (y * c.width + x);
            if (d[i] < r && d[i + 1] < g && d[i + 2] > b && d[i + 3] > 200) cols[x]++;
        }
        const s = document.querySelector('#scrub');
        return {cols, height: c.height, t0: +s.getAttribute('aria-valuemin'), t1: +s.getAttribute('aria-valuemax'),
                ratio: window.devicePixelRatio};
    }""", [stream, AUDIO_RGB_MAX_R, AUDIO_RGB_MAX_G, AUDIO_RGB_MIN_B])


def envelope(wav_bytes: bytes, points_per_second: int = 10) -> np.ndarray:
    """The audio's own envelope, from the stitched WAV: the loudest |sample| per 1/points_per_second s, 0..254."""
    rate, _, pcm = wav.read(wav_bytes)
    x = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    per = rate // points_per_second
    n = -(-len(x) // per)
    padded = np.zeros(n * per, dtype=np.int32)
    padded[: len(x)] = x
    return np.asarray(np.minimum(254, -(-padded.reshape(n, per).max(axis=1) * 254 // 32768)))


def test_a_wrong_key_is_refused_with_a_clear_message(context: BrowserContext, demo: dict[str, Any]) -> None:
    page = context.new_page()
    page.goto(f"{demo['stack'].functions_url}/api/ui")
    assert page.is_visible("#auth") and not page.is_visible("#list")
    page.fill("#key", "not-the-key")
    page.click("#keyform button[type=submit]")
    wait_until(page, "() => document.querySelector('#autherror').textContent.length > 0")
    message = page.text_content("#autherror") or ""
    assert "refused this key" in message and "401" in message
    assert not page.is_visible("#list")
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    shot(page, "wrong-key", full=False)


def test_the_list_shows_both_demo_calls(context: BrowserContext, demo: dict[str, Any]) -> None:
    page = context.new_page()
    urls = sign_in(page, demo)
    rows = {r.get_attribute("data-call"): r for r in page.query_selector_all("#calls tbody tr")}
    for label, direction in (("outbound", "outbound"), ("incoming", "inbound")):
        row = rows[demo[label]]
        cells = [c.inner_text() for c in row.query_selector_all("td")]
        assert cells[1] == direction and cells[4] == "disconnected" and cells[5] == "ready", cells
        assert cells[6].endswith("%") and cells[7] == "none", cells
    assert OUTBOUND_TARGET in rows[demo["outbound"]].inner_text()
    assert CALLER in rows[demo["incoming"]].inner_text()
    # newest first: the incoming call was answered after the outbound one was placed
    order = [r.get_attribute("data-call") for r in page.query_selector_all("#calls tbody tr")]
    assert order.index(demo["incoming"]) < order.index(demo["outbound"])
    shot(page, "list", full=False)
    key = demo["stack"].function_key
    assert urls and not any(key in u for u in urls)  # the key travels in a header, never in a URL


def test_the_unmixed_call_draws_each_participants_audio(context: BrowserContext, demo: dict[str, Any]) -> None:
    page = context.new_page()
    sign_in(page, demo)
    open_call(page, demo["outbound"])
    doc = demo["client"].recording(demo["outbound"])
    streams = doc["manifest"]["streams"]
    lanes = page.query_selector_all("#lanes .lane")
    assert len(streams) == 2 and len(lanes) == 2
    assert {lane.get_attribute("data-participant") for lane in lanes} == {s["participantRawId"] for s in streams}
    loud_at: dict[str, set[int]] = {}
    for s in streams:
        with demo["client"].audio(demo["outbound"], s["participantRawId"]) as (_n, _name, chunks):
            env = envelope(b"".join(chunks))
        drawn = audio_columns(page, s["stream"])
        cols, height, ratio = drawn["cols"], drawn["height"], drawn["ratio"]
        per_px = (drawn["t1"] - drawn["t0"]) / len(cols)
        mismatched, loud, flat = 0, set(), 0
        for x, got in enumerate(cols):
            first = int(np.floor((drawn["t0"] + x * per_px) * 10))
            last = max(first + 1, int(np.floor((drawn["t0"] + (x + 1) * per_px) * 10)))
            span = env[max(0, first):max(0, min(len(env), last))]
            expected = 2 * max(ratio, span.max() / 254 * (height / 2 - 1)) if len(span) else 0.0
            if abs(got - expected) > 3:
                mismatched += 1
            if len(span) and span.max() > 90:
                assert got > 0.3 * height, (s["participantRawId"], x, got, span.max())
                loud.add(x)
            if len(span) and span.max() == 0:
                assert got <= 2 * ratio + 1, (s["participantRawId"], x, got)
                flat += 1
        assert mismatched <= 0.02 * len(cols), (s["participantRawId"], mismatched, len(cols))
        assert len(loud) > 0.1 * len(cols) and flat > 0.1 * len(cols), (len(loud), flat)
        loud_at[s["stream"]] = loud
    a, b = loud_at.values()
    assert len(a & b) < 0.05 * len(a | b)  # the speakers take turns: one lane is loud where the other is flat
    path = shot(page, "call-unmixed")
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        README_SHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SHOT)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # readable at phone width: no sideways scroll
    shot(page, "call-unmixed-phone")


def test_the_dtmf_markers_sit_at_the_tones(context: BrowserContext, demo: dict[str, Any]) -> None:
    page = context.new_page()
    sign_in(page, demo)
    open_call(page, demo["outbound"])
    doc = demo["client"].recording(demo["outbound"])
    origin = _seconds(doc["manifest"]["clockOrigin"])
    scrub = page.locator("#scrub").bounding_box()
    t0, t1 = (float(page.get_attribute("#scrub", a) or 0) for a in ("aria-valuemin", "aria-valuemax"))
    assert scrub is not None
    for (when, tone), d in zip(DEMO_DTMF, doc["manifest"]["dtmf"], strict=True):
        assert d["tone"] == tone
        recorded = _seconds(d.get("timestamp") or d["receivedAt"]) - origin
        assert abs(recorded - when) < 0.3, (tone, recorded)  # the simulator sent it at `when` on the call clock
        box = page.locator(f"#dtmf button[data-tone='{tone}']").bounding_box()
        assert box is not None
        drawn = t0 + (box["x"] + box["width"] / 2 - scrub["x"]) / scrub["width"] * (t1 - t0)
        assert abs(drawn - recorded) < 0.05, (tone, drawn, recorded)
    # a marker is a button: Enter on it seeks the player there
    page.focus("#dtmf button[data-tone='4']")
    page.keyboard.press("Enter")
    assert abs(float(page.get_attribute("#scrub", "aria-valuenow") or 0) - recorded_of(doc, "4", origin)) < 0.15


def recorded_of(doc: dict[str, Any], tone: str, origin: float) -> float:
    d = next(d for d in doc["manifest"]["dtmf"] if d["tone"] == tone)
    return _seconds(d.get("timestamp") or d["receivedAt"]) - origin


def _seconds(iso: str) -> float:
    return parse_iso(iso)


def test_playback_starts_and_the_keyboard_seeks(context: BrowserContext, demo: dict[str, Any]) -> None:
    page = context.new_page()
    sign_in(page, demo)
    open_call(page, demo["outbound"])
    windows: list[tuple[str, str]] = []  # (participant, Range) of every audio window the player fetched
    page.on("request", lambda r: windows.append((parse_qs(urlsplit(r.url).query)["participant"][0],
                                                 r.headers.get("range", ""))) if "/audio?" in r.url else None)
    # the Web Audio player: both lanes mixed in the browser, fetched window by window
    page.click("#play")
    wait_until(page, "() => +document.querySelector('#scrub').getAttribute('aria-valuenow') > 1.0", timeout=15)
    assert page.get_attribute("#play", "aria-pressed") == "true"
    both = {p for p, _ in windows}
    assert len(both) == 2 and all(r.startswith("bytes=") for _, r in windows), windows
    # one participant alone
    only = page.query_selector_all("#lanes .lane")[1]
    alone = only.get_attribute("data-participant")
    only.query_selector("button.solo").click()
    windows.clear()
    page.wait_for_timeout(1500)  # the player restarts at once and keeps 8 s scheduled ahead
    assert windows and {p for p, _ in windows} == {alone}, windows
    page.click("#play")
    paused = float(page.get_attribute("#scrub", "aria-valuenow") or 0)
    end = float(page.get_attribute("#scrub", "aria-valuemax") or 0)
    page.focus("#scrub")
    page.keyboard.press("ArrowRight")  # +1 s
    page.keyboard.press("PageDown")  # -10 s
    assert abs(float(page.get_attribute("#scrub", "aria-valuenow") or 0) - max(0.0, min(paused + 1, end) - 10)) < 0.2
    page.keyboard.press("Home")
    assert float(page.get_attribute("#scrub", "aria-valuenow") or 0) == 0.0
    # the finished multichannel file in an audio element
    audio = page.locator("#files li[data-kind='multichannel'] audio")
    assert audio.count() == 1
    audio.evaluate("a => a.play()")
    wait_until(page, "() => document.querySelector(\"#files li[data-kind='multichannel'] audio\").currentTime > 0.5",
               timeout=15)
    shot(page, "playing", full=False)


def test_a_live_calls_lanes_grow_while_it_streams(context: BrowserContext, demo: dict[str, Any]) -> None:
    stack, client = demo["stack"], demo["client"]
    target = "+15557650000"
    stack.simulator.set_script(CallScript(duration_s=16.0, speakers=2), target=f"4:{target}")
    placed = client.place_call({"target": target, "audioChannel": "unmixed", "sampleRate": 16000})
    call_id = placed["callConnectionId"]
    page = context.new_page()
    urls = sign_in(page, demo)
    page.wait_for_selector(f"#calls tr[data-call='{call_id}']")  # the list picks up a new call by itself
    deadline = time.monotonic() + 20
    while client.recording(call_id)["manifest"] is None or not client.recording(call_id)["manifest"]["streams"]:
        assert time.monotonic() < deadline, "no chunk landed"
        time.sleep(0.3)
    open_call(page, call_id)
    assert page.text_content("#call-status") == "live"
    assert page.is_visible("#live")
    extents = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and page.text_content("#call-status") == "live":
        lanes = page.query_selector_all("#lanes .lane")
        ends = []
        for lane in lanes:
            drawn = audio_columns(page, lane.get_attribute("data-stream") or "")
            cols = drawn["cols"]
            last = max((x for x, c in enumerate(cols) if c > 0), default=-1)
            ends.append(drawn["t0"] + (last + 1) / len(cols) * (drawn["t1"] - drawn["t0"]))
        extents.append(max(ends) if ends else 0.0)
        if len(extents) == 2:
            page.click("#live")  # listen live: the player jumps to the newest landed audio
            wait_until(page, "() => +document.querySelector('#scrub').getAttribute('aria-valuenow') > 0.5", timeout=10)
            shot(page, "live", full=False)
        time.sleep(1.5)
    grew = [b - a for a, b in itertools.pairwise(extents) if b > a + 0.5]
    assert len(grew) >= 2, extents  # the lanes grew at least twice while the call streamed
    assert extents[-1] - extents[0] > 4.0, extents
    # while live, the page asked only for the newest chunks' peaks ...
    incremental = [u for u in urls if "/peaks?" in u and parse_qs(urlsplit(u).query).get("fromSeq", ["0"])[0] != "0"]
    assert incremental, [u for u in urls if "/peaks?" in u]
    wait_until(page, "() => document.querySelector('#call-status').textContent === 'ready'", timeout=60)
    # ... and what it drew by joining them is what a fresh load of the finished call draws
    followed = {lane.get_attribute("data-stream"): audio_columns(page, lane.get_attribute("data-stream") or "")
                for lane in page.query_selector_all("#lanes .lane")}
    page.reload()
    wait_until(page, "() => document.querySelectorAll('#lanes .lane canvas').length > 0")
    page.wait_for_timeout(500)
    for stream, drawn in followed.items():
        fresh = audio_columns(page, stream or "")
        assert (fresh["t0"], fresh["t1"]) == (drawn["t0"], drawn["t1"])
        differ = sum(1 for a, b in zip(fresh["cols"], drawn["cols"], strict=True) if abs(a - b) > 1)
        assert differ <= 2, (stream, differ)


def test_the_page_and_api_agree_on_the_function_key(demo: dict[str, Any]) -> None:
    """The page is code (served anonymously); everything it reads needs the key."""
    url = demo["stack"].functions_url
    assert httpx.get(f"{url}/api/ui").status_code == 200
    assert httpx.get(f"{url}/api/recordings/{demo['outbound']}/peaks").status_code == 401
    ok = httpx.get(f"{url}/api/recordings/{demo['outbound']}/peaks",
                   headers={"x-functions-key": demo["stack"].function_key})
    assert ok.status_code == 200 and len(ok.json()["streams"]) == 2
