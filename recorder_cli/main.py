"""The `acsrec` commands. Global options name the API (`--url`, `--key`, or ACSREC_URL / ACSREC_KEY); every
command prints JSON or a short table, errors go to stderr with exit code 1."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import typer

from recorder_cli.client import ApiFailure, RecorderClient, save_stream

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
    typer.echo(f"{'CREATED':24}  {'CALL CONNECTION ID':38}  {'DIR':8}  {'STATUS':12}  {'STREAMING':9}  TARGET")
    for item in page["items"]:
        typer.echo(f"{item.get('createdAt') or '-':24}  {item['callConnectionId']:38}  "
                   f"{item.get('direction') or '-':8}  {item.get('status') or '-':12}  "
                   f"{item.get('streaming') or '-':9}  {item.get('target') or '-'}")
    if page.get("nextPageToken"):
        typer.echo(f"more: --page-token {page['nextPageToken']}")


@recordings_app.command("show")
@reports_failures
def recordings_show(ctx: typer.Context, call_id: Annotated[str, typer.Argument(help="callConnectionId")]) -> None:
    """Manifest, call state and short-lived chunk URLs of one call."""
    _print(_client(ctx).recording(call_id))


@app.command()
@reports_failures
def download(
    ctx: typer.Context,
    call_id: Annotated[str, typer.Argument(help="callConnectionId")],
    participant: Annotated[str | None, typer.Option(help="Participant raw id (unmixed), or 'mixed'")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: server's name)")]
    = None,
) -> None:
    """Download one stream of a call stitched into a single WAV, with a progress bar."""
    with _client(ctx).audio(call_id, participant) as (length, name, chunks):
        target = output or Path(name or f"{call_id}.wav")
        if length:
            with typer.progressbar(length=length, label=target.name, show_pos=True) as bar:
                written = save_stream(chunks, target, bar.update)
        else:
            written = save_stream(chunks, target, lambda _n: None)
    typer.echo(f"wrote {target} ({written} bytes)")


if __name__ == "__main__":
    app()
