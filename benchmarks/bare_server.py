"""The baseline: a bare Starlette WebSocket receive loop under the same uvicorn settings as the streamer (uvloop).

`python -m benchmarks.bare_server --port P [--uvicorn-defaults]`. GET /stats -> {"frames": n}.

`--uvicorn-defaults` runs the same loop on uvicorn's default WebSocket backend and asyncio's own event loop: the
loop as most people would first write it, and the stack the issue's "about 55 k frames/s" reference matches. The
capacity benchmark reports it beside the like-for-like baseline; the targets are set against the latter.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

COUNT = {"frames": 0}


async def ws_endpoint(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            await ws.receive_text()
            COUNT["frames"] += 1
    except WebSocketDisconnect:
        pass


async def stats(_request: Request) -> JSONResponse:
    return JSONResponse(COUNT)


app = Starlette(routes=[Route("/stats", stats), WebSocketRoute("/ws", ws_endpoint),
                        WebSocketRoute("/ws/{rest:path}", ws_endpoint)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvicorn-defaults", action="store_true")
    args = parser.parse_args()
    ws, loop = ("websockets", "asyncio") if args.uvicorn_defaults else ("websockets-sansio", "uvloop")
    uvicorn.run(app, host="127.0.0.1", port=args.port, ws=ws, loop=loop, log_level="warning",
                ws_ping_interval=20.0, ws_ping_timeout=20.0)
