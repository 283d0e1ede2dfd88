"""`python -m devstack.simulator --port 8100 [...]`: run the ACS simulator on loopback until Ctrl-C.

Prints one JSON line with what the app needs (endpoint, access key, issuer, audience, JWKS URL), then serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import uvicorn

from devstack.ports import free_port
from devstack.simulator.app import create_app
from devstack.simulator.audio import AudioSpec
from devstack.simulator.config import DEFAULT_RESOURCE_ID, CallScript, SimulatorConfig, random_access_key
from devstack.simulator.media import Faults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devstack.simulator", description=__doc__)
    p.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    p.add_argument("--access-key", default=None, help="base64 HMAC key (default: random, printed)")
    p.add_argument("--no-verify-hmac", action="store_true", help="accept unsigned REST requests")
    p.add_argument("--issuer", default=None, help="JWT iss (default: the real ACS issuer)")
    p.add_argument("--audience", default=DEFAULT_RESOURCE_ID, help="JWT aud = ACS immutable resource id")
    p.add_argument("--pace", type=float, default=1.0, help="1 = real time, N = N× faster, 0 = unthrottled")
    p.add_argument("--duration", type=float, default=20.0, help="scripted call length in seconds (0 = until hung up)")
    p.add_argument("--speakers", type=int, default=2, help="participants talking (1-4)")
    p.add_argument("--audio", default="auto", help="auto | espeak | synth | wav:PATH[,PATH...]")
    p.add_argument("--connect-delay", type=float, default=0.2, help="seconds until CallConnected")
    p.add_argument("--jitter-ms", type=int, default=0, help="timestamp jitter ± ms")
    p.add_argument("--gap", action="append", default=[], metavar="START:LEN", help="skip frames (seconds)")
    p.add_argument("--drop-at", type=float, default=None, help="abort the WebSocket at this call second")
    p.add_argument("--reconnect", action="store_true", help="reconnect after a drop, as ACS would")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    if args.audio.startswith("wav:"):
        audio = AudioSpec(source="wav", wav_paths=tuple(args.audio[4:].split(",")))
    else:
        audio = AudioSpec(source=args.audio)
    gaps = tuple((float(a), float(b)) for a, b in (g.split(":") for g in args.gap))
    faults = Faults(jitter_ms=args.jitter_ms, gaps=gaps, drop_at_s=args.drop_at, reconnect=args.reconnect)
    script = CallScript(duration_s=args.duration or None, speakers=args.speakers, audio=audio,
                        connect_delay_s=args.connect_delay, faults=faults)
    kwargs = {"issuer": args.issuer} if args.issuer else {}
    return SimulatorConfig(access_key=args.access_key or random_access_key(), verify_hmac=not args.no_verify_hmac,
                           audience=args.audience, pace=args.pace, default_script=script, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = config_from_args(args)
    port = args.port or free_port()
    config.public_url = f"http://127.0.0.1:{port}"
    print(json.dumps({"endpoint": config.public_url, "accessKey": config.access_key, "issuer": config.issuer,
                      "audience": config.audience, "jwksUrl": f"{config.public_url}/calling/keys",
                      "audio": config.default_script.audio.resolved_source()}), flush=True)
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
