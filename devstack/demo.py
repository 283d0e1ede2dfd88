"""The README's first command: the whole loop on this machine, no Azure, no tunnel.

Starts Azurite, the streamer, the functions (local host) and the ACS simulator on loopback; places one outbound
call (unmixed, two speakers, 24 kHz, DTMF) through `POST /api/calls` and takes one incoming call (mixed, 16 kHz)
through the Event Grid `IncomingCall` function — the real function code and the real Call Automation SDK; the
simulator streams ~20 s of speech-like audio per call (espeak-ng when installed, generated otherwise) to the
streamer. Then it prints each manifest, writes the stitched WAVs to `demo-output/` and prints the recordings page's
address and key; `--keep` keeps the stack up so a person can look. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from devstack.simulator import AudioSpec, CallScript
from devstack.stack import LocalStack
from recorder_cli.client import RecorderClient, blob_bytes, save_stream

OUTBOUND_TARGET = "+15557654321"
CALLER = "+15551230000"
OUR_NUMBER = "+15559870000"
DEMO_DTMF = ((3.0, "4"), (3.5, "2"))  # (seconds into the call, tone)


def say(msg: str) -> None:
    print(msg, flush=True)


def place_demo_calls(stack: LocalStack, client: RecorderClient, seconds: float,
                     audio: AudioSpec | None = None) -> dict[str, str]:
    """The demo's two calls: one placed through `POST /api/calls` (unmixed, 24 kHz, two speakers, DTMF 4 and 2 at
    3.0 and 3.5 s) and one incoming through the Event Grid function (mixed, 16 kHz). -> {"outbound": id,
    "incoming": id}."""
    assert stack.simulator is not None
    sim, audio = stack.simulator, audio or AudioSpec(source="auto")
    sim.set_script(CallScript(duration_s=seconds, speakers=2, audio=audio, dtmf=DEMO_DTMF),
                   target=f"4:{OUTBOUND_TARGET}")
    placed = client.place_call({"target": OUTBOUND_TARGET, "audioChannel": "unmixed", "sampleRate": 24000,
                                "dtmf": True, "operationContext": "demo-outbound"})
    rang = sim.place_incoming_call(stack.event_grid_url, from_=CALLER, to=OUR_NUMBER,
                                   script={"durationS": seconds, "speakers": 2})
    return {"outbound": placed["callConnectionId"], "incoming": sim.wait_for_answer(rang["incomingCallContext"])}


def progress_line(client: RecorderClient, call_id: str, label: str) -> str:
    try:
        rec = client.recording(call_id)
    except Exception:
        return f"  {label:9s} {call_id[:8]}…  waiting for the first chunk"
    state = rec.get("callState") or {}
    chunks = ", ".join(f"{(s.get('participantRawId') or 'mixed')[-14:]}: {len(s['chunks'])}"
                       for s in rec.get("streams", []))
    return (f"  {label:9s} {call_id[:8]}…  call {state.get('status', '?'):12s} streaming "
            f"{state.get('streaming') or '-':9s} chunks landed [{chunks}]")


def summary(client: RecorderClient, call_id: str, label: str, out: Path) -> list[Path]:
    rec = client.recording(call_id)
    m, state = rec["manifest"], rec.get("callState") or {}
    say(f"\n{label} call {call_id}")
    say(f"  call: {state.get('status')} (connected {state.get('connectedAt')}, disconnected "
        f"{state.get('disconnectedAt')}), streaming {state.get('streaming')}")
    say(f"  manifest complete: {m['complete']}  sample rate: {m['sampleRate']} Hz  "
        f"channel: {m['audioChannel']}  chunk: {m['chunkSeconds']} s  correlation: {m['correlationId']}")
    for s in m["streams"]:
        total = sum(c["durationMs"] for c in s["chunks"]) / 1000
        say(f"  stream {s['participantRawId'] or 'mixed'}: {len(s['chunks'])} chunks, {total:.1f} s "
            f"(seq {s['chunks'][0]['seq']}..{s['chunks'][-1]['seq']})")
    if m["gaps"]:
        say(f"  gaps: {len(m['gaps'])}, {sum(g['durationMs'] for g in m['gaps']) / 1000:.2f} s of silence filled")
    if m["dtmf"]:
        say(f"  DTMF: {''.join(d['tone'] for d in m['dtmf'])}")
    files = []
    for s in m["streams"]:
        who = s["participantRawId"]
        name = f"{label}-{(who or 'mixed').replace(':', '_').replace('+', '')}.wav"
        with client.audio(call_id, who) as (_length, _server_name, chunks):
            size = save_stream(chunks, out / name, lambda _n: None)
        say(f"  wrote {out / name} ({size:,} bytes)")
        files.append(out / name)
    return files


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    audio = AudioSpec(source="auto")
    say(f"audio source: {audio.resolved_source()} (espeak-ng when installed, else generated speech-like audio)")
    script = CallScript(duration_s=args.seconds, speakers=2, audio=audio)
    say("starting Azurite, streamer, functions host and ACS simulator on loopback…")
    with LocalStack(workdir=out / "stack", pace=args.pace, default_script=script) as stack:
        assert stack.simulator is not None
        sim = stack.simulator
        say(f"  functions  {stack.functions_url}/api   (function key in {out / 'stack'}, logs functions.log)")
        say(f"  streamer   {stack.streamer_url}/ws  (logs streamer.log)")
        say(f"  simulator  {sim.url}  (ACS REST + callbacks + media WebSocket client)")
        client = RecorderClient(stack.functions_url, stack.function_key)
        key_file = out / "stack" / "function-key.txt"
        key_file.write_text(stack.function_key + "\n")
        say(page_banner(stack.functions_url, stack.function_key, key_file))

        placed = place_demo_calls(stack, client, args.seconds, audio)
        say(f"\nPOST /api/calls -> 201 {placed['outbound']} (unmixed, 24 kHz, 2 speakers)")
        say(f"IncomingCall from {CALLER} -> answered {placed['incoming']} (mixed, 16 kHz)\n")
        calls: dict[str, str] = {cid: label for label, cid in placed.items()}

        deadline = time.monotonic() + args.seconds / max(args.pace, 0.01) + 60
        while True:
            ended = {cid: sim.call(cid)["finished"] for cid in calls}
            for cid, label in calls.items():
                say(progress_line(client, cid, label))
            if all(ended.values()) or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        for cid in calls:
            wait_complete(client, cid)
        files = []
        for cid, label in calls.items():
            files += summary(client, cid, label, out)
        say(f"\n{len(files)} stitched WAVs in {out} (play them with any audio player); process logs in {out / 'stack'}")
        say("\nfinished recordings (the function app finalizes each call once it ended and its sessions settled):")
        for cid, label in calls.items():
            files += finished(client, cid, label, out)
        events = stack.wait_for_events(len(calls), type="AcsCallRecorder.RecordingReady", timeout=30)
        say(f"\nthe local Event Grid topic received {len(events)} RecordingReady event(s):")
        for e in events:
            data = e.get("data") or {}
            say(f"  id {e['id']}  subject {e['subject']}  coverage {data.get('coverage')}  "
                f"digest {str(data.get('digest', {}).get('value'))[:16]}…")
        not_ready = [label for cid, label in calls.items() if client.recording(cid)["status"] != "ready"]
        problems = [f"not ready: {', '.join(not_ready)}"] if not_ready else []
        if len(events) < len(calls):
            problems.append(f"{len(events)} RecordingReady event(s) for {len(calls)} calls")
        say("\n" + page_banner(stack.functions_url, stack.function_key, key_file))
        if args.keep:
            say("\n--keep: the stack stays up so you can look (open the page above). Ctrl-C stops everything.")
            while True:
                time.sleep(3600)
        else:
            say("  (the stack stops now; run with --keep to keep it up and look)")
    if problems:
        say(f"\nDEMO FAILED: {'; '.join(problems)} (see the process logs in {out / 'stack'})")
        return 1
    return 0


def page_banner(functions_url: str, key: str, key_file: Path) -> str:
    return (f"recordings page  {functions_url}/api/ui\n"
            f"  sign in with the function key {key}\n"
            f"  (also in {key_file}; the page keeps it for the tab only and sends it as a header, never in a URL)")


def finished(client: RecorderClient, call_id: str, label: str, out: Path, timeout: float = 60.0) -> list[Path]:
    """Wait until the recording is ready, print its completeness and digest, download its multichannel file (or
    its one stream when mixed)."""
    deadline = time.monotonic() + timeout
    doc = client.recording(call_id)
    while doc["status"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.5)
        doc = client.recording(call_id)
    c = doc.get("completeness") or {}
    say(f"  {label}: {doc['status']}, coverage {c.get('coverage')}, digest {(doc.get('digest') or {}).get('value')}")
    say(f"    {c.get('statement')}")
    files = [f for f in doc.get("files", []) if f["kind"] == "multichannel"] or doc.get("files", [])[:1]
    written = []
    for f in files:
        target = out / f"{label}-finished-{f['blob'].rsplit('/', 1)[-1]}"
        size = save_stream(blob_bytes(f["url"]), target, lambda _n: None)
        say(f"    wrote {target} ({size:,} bytes, {f['channels']} channel(s), sha256 {f['sha256'][:16]}…)")
        written.append(target)
    return written


def wait_complete(client: RecorderClient, call_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rec = client.recording(call_id)
        if rec["manifest"]["complete"] or time.monotonic() > deadline:
            return rec
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call (default 20)")
    parser.add_argument("--pace", type=float, default=1.0, help="1 = real time; 4 = four times faster")
    parser.add_argument("--out", default="demo-output", help="where the WAVs go (default demo-output/)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the stack up after the demo calls, to look at them on the recordings page")
    args = parser.parse_args(argv)

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt  # `kill` or a timeout stops the stack as Ctrl-C does, leaving no process behind

    signal.signal(signal.SIGTERM, terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("\ninterrupted; every process the demo started has been stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
