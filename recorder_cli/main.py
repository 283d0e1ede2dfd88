"""The `acsrec` commands. Global options name the API (`--url`, `--key`, or ACSREC_URL / ACSREC_KEY); every
command prints JSON or a short table, errors go to stderr with exit code 1."""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import msgspec
import typer

from common import manifest as mf
from common.recording import FinishedFile, digest_of
from recorder_cli.client import ApiFailure, RecorderClient, blob_bytes, save_stream

P = ParamSpec("P")

app = typer.Typer(help="Place calls and fetch recordings from the ACS live call recorder.", no_args_is_help=True,
                  add_completion=False)
recordings_app = typer.Typer(help="List and inspect recordings.", no_args_is_help=True)
streaming_app = typer.Typer(help="Start or stop media streaming on a live call.", no_args_is_help=True)
app.add_typer(recordings_app, name="recordings")
app.add_typer(streaming_app, name="streaming")


def _client(ctx: typer.Context) -> RecorderClient:
    client: RecorderClient = ctx.obj
    ctx.call_on_close(client.close)
    return client


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def reports_failures(command: Callable[P, None]) -> Callable[P, None]:
    """Every command's one error path: an API failure is printed to stderr and exits 1, without a traceback."""

    @functools.wraps(command)  # typer reads the command's parameters through __wrapped__
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except ApiFailure as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from None

    return run


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="ACSREC_URL", help="Function app URL, e.g. https://app.azurewebsites.net "
                                                               "or http://127.0.0.1:7071")] = "http://127.0.0.1:7071",
    key: Annotated[str | None, typer.Option(envvar="ACSREC_KEY", help="Function key")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the API")] = 60.0,
) -> None:
    ctx.obj = RecorderClient(url, key, timeout)


@app.command()
@reports_failures
def call(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="E.164 number (+15551234567) or ACS user id (8:acs:…)")],
    source: Annotated[str | None, typer.Option("--from", help="E.164 caller id (default: the app's)")] = None,
    unmixed: Annotated[bool, typer.Option("--unmixed/--mixed", help="One stream per speaker, or one mix")] = False,
    rate: Annotated[int, typer.Option(help="Sample rate: 16000 or 24000")] = 16000,
    dtmf: Annotated[bool, typer.Option(help="Also record DTMF tones")] = False,
    context: Annotated[str | None, typer.Option(help="operationContext echoed in ACS events")] = None,
) -> None:
    """Place a call whose audio is recorded."""
    body: dict[str, Any] = {"target": target, "audioChannel": "unmixed" if unmixed else "mixed",
                            "sampleRate": rate, "dtmf": dtmf}
    if source:
        body["sourceCallerId"] = source
    if context:
        body["operationContext"] = context
    _print(_client(ctx).place_call(body))


@app.command()
@reports_failures
def hangup(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="callConnectionId")]) -> None:
    """End a call for everyone."""
    _client(ctx).hang_up(call_id)
    typer.echo(f"hung up {call_id}")


@streaming_app.command("start")
@reports_failures
def streaming_start(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="callConnectionId")]) -> None:
    """Ask ACS to (re)start streaming the call's audio."""
    _print(_client(ctx).streaming(call_id, "start"))


@streaming_app.command("stop")
@reports_failures
def streaming_stop(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="callConnectionId")]) -> None:
    """Ask ACS to stop streaming (the call goes on)."""
    _print(_client(ctx).streaming(call_id, "stop"))


@recordings_app.command("list")
@reports_failures
def recordings_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Calls per page (1-100)")] = 20,
    page_token: Annotated[str | None, typer.Option(help="nextPageToken of a previous page")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON page")] = False,
) -> None:
    """Recent calls, newest first."""
    page = _client(ctx).recordings(limit, page_token)
    if as_json:
        _print(page)
        return
    typer.echo(f"{'CREATED':24}  {'CALL CONNECTION ID':38}  {'DIR':8}  {'CALL':12}  {'RECORDING':10}  "
               f"{'COVERAGE':8}  TARGET")
    for item in page["items"]:
        cov = item.get("coverage")
        typer.echo(f"{item.get('createdAt') or '-':24}  {item['callConnectionId']:38}  "
                   f"{item.get('direction') or '-':8}  {item.get('callStatus') or '-':12}  "
                   f"{item.get('status') or '-':10}  {f'{cov * 100:.1f} %' if cov is not None else '-':8}  "
                   f"{item.get('target') or '-'}")
    if page.get("nextPageToken"):
        typer.echo(f"more: --page-token {page['nextPageToken']}")


@recordings_app.command("show")
@reports_failures
def recordings_show(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="callConnectionId")]) -> None:
    """Manifest, call state and short-lived chunk URLs of one call."""
    _print(_client(ctx).recording(call_id))


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    c = doc.get("completeness") or {}
    return {"callConnectionId": doc["callConnectionId"], "status": doc["status"], "coverage": c.get("coverage"),
            "complete": c.get("complete"), "statement": c.get("statement"),
            "digest": (doc.get("digest") or {}).get("value"), "eventId": doc.get("eventId"),
            "files": [{k: f.get(k) for k in ("kind", "participantRawId", "channels", "durationMs", "bytes", "blob")}
                      for f in doc.get("files", [])]}


@recordings_app.command("wait")
@reports_failures
def recordings_wait(
    ctx: typer.Context,
    call_id: Annotated[str, typer.Argument(help="callConnectionId")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for `ready`")] = 300.0,
    interval: Annotated[float, typer.Option(help="Seconds between polls")] = 1.0,
) -> None:
    """Wait until the recording is ready (a progress line on stderr), then print its summary."""
    client = _client(ctx)
    deadline = time.monotonic() + timeout
    while True:
        doc = client.recording(call_id)
        c = doc.get("completeness") or {}
        cov = c.get("coverage")
        line = f"\r{call_id}: {doc['status']:10}  coverage {f'{cov * 100:.1f} %' if cov is not None else '-':8}"
        print(line, end="", file=sys.stderr, flush=True)
        if doc["status"] == "ready":
            print(file=sys.stderr)
            _print(_summary(doc))
            return
        if time.monotonic() >= deadline:
            print(file=sys.stderr)
            raise ApiFailure(0, f"not ready after {timeout:g} s (status {doc['status']})")
        time.sleep(interval)


def _sha256(url: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for block in blob_bytes(url):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


@recordings_app.command("verify")
@reports_failures
def recordings_verify(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="callConnectionId")]) -> None:
    """Download every chunk and finished file, check each against its sha256 in the manifest and the recording
    document, and recompute the digest. Prints OK, or every difference (exit 1)."""
    doc = _client(ctx).recording(call_id)
    if doc.get("status") != "ready" or not doc.get("digest"):
        raise ApiFailure(0, f"the recording is {doc.get('status')}, not ready: nothing to verify yet")
    manifest = msgspec.convert(doc["manifest"], mf.Manifest) if doc.get("manifest") else None
    files = [msgspec.convert(f, FinishedFile) for f in doc["files"]]
    problems: list[str] = []
    listed = {(s.stream, c.seq): c for s in (manifest.streams if manifest else []) for c in s.chunks}
    checked = 0
    for links in doc.get("streams", []):
        for link in links["chunks"]:
            chunk = listed.get((links["stream"], link["seq"]))
            try:
                got, _ = _sha256(link["url"])
            except ApiFailure as exc:  # one blob that cannot be read is a difference, not the end of the check
                problems.append(f"chunk {links['stream']}/{link['seq']:06d}: cannot be read ({exc}); chunks "
                                "expire after the chunk retention, the finished files do not")
                continue
            checked += 1
            if chunk is None or got != chunk.sha256:
                problems.append(f"chunk {links['stream']}/{link['seq']:06d}: sha256 {got} differs from the "
                                f"manifest's {chunk.sha256 if chunk else '(not listed)'}")
    if checked != len(listed):
        problems.append(f"the manifest lists {len(listed)} chunks, {checked} could be read")
    for f in files:
        try:
            got, size = _sha256(f.url or "")
        except ApiFailure as exc:
            problems.append(f"file {f.blob}: cannot be read ({exc})")
            continue
        if got != f.sha256 or size != f.size:
            problems.append(f"file {f.blob}: sha256 {got} ({size} bytes) differs from the document's {f.sha256} "
                            f"({f.size} bytes)")
    digest = digest_of(manifest, files)
    if digest.value != doc["digest"]["value"]:
        problems.append(f"digest {digest.value} differs from the document's {doc['digest']['value']}")
    if problems:
        for p in problems:
            typer.echo(f"DIFFERS: {p}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: digest {digest.value} covers {digest.chunks} chunks and {digest.files} files, all verified")


def _finished(doc: dict[str, Any], participant: str | None, multichannel: bool) -> list[dict[str, Any]]:
    """The finished file (all its parts) asked for, when the recording is ready."""
    if doc.get("status") != "ready":
        return []
    if multichannel:
        return [f for f in doc["files"] if f["kind"] == "multichannel"]
    streams = [f for f in doc["files"] if f["kind"] == "stream"]
    wanted = None if participant in (None, "mixed") else participant
    chosen = [f for f in streams if f.get("participantRawId") == wanted]
    if not chosen and participant is None and len({f["stream"] for f in streams}) == 1:
        chosen = streams
    return sorted(chosen, key=lambda f: f["part"])


@app.command()
@reports_failures
def download(
    ctx: typer.Context,
    call_id: Annotated[str, typer.Argument(help="callConnectionId")],
    participant: Annotated[str | None, typer.Option(help="Participant raw id (unmixed), or 'mixed'")] = None,
    multichannel: Annotated[bool, typer.Option("--multichannel", help="The multichannel file (unmixed calls, "
                                                                      "once ready)")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: server's name)")]
    = None,
) -> None:
    """Download a call's audio: the finished file once the recording is ready, the stream stitched from its
    chunks while the call is live. A file split into parts is written as numbered parts."""
    client = _client(ctx)
    doc = client.recording(call_id)
    parts = _finished(doc, participant, multichannel)
    if multichannel and not parts:
        raise ApiFailure(0, f"no multichannel file: the recording is {doc.get('status')}"
                         + (" (a mixed call has none)" if doc.get("status") == "ready" else ""))
    if parts:
        for f in parts:
            name = f["blob"].rsplit("/", 1)[-1]
            target = output or Path(f"{call_id}-{name}")
            if len(parts) > 1 and output is not None:
                target = output.with_name(f"{output.stem}.{f['part']:03d}{output.suffix}")
            with typer.progressbar(length=f["bytes"], label=target.name, show_pos=True) as bar:
                written = save_stream(blob_bytes(f["url"]), target, bar.update)
            if written != f["bytes"]:
                raise ApiFailure(0, f"{target}: {written} bytes, the recording says {f['bytes']}")
            typer.echo(f"wrote {target} ({written} bytes, finished file, sha256 {f['sha256']})")
        return
    with client.audio(call_id, participant) as (length, name, chunks):
        target = output or Path(name or f"{call_id}.wav")
        if length:
            with typer.progressbar(length=length, label=target.name, show_pos=True) as bar:
                written = save_stream(chunks, target, bar.update)
        else:
            written = save_stream(chunks, target, lambda _n: None)
    typer.echo(f"wrote {target} ({written} bytes)")


if __name__ == "__main__":
    app()
