"""The baseline: a bare Starlette WebSocket receive loop under the same uvicorn settings as the streamer (uvloop).

`python -m benchmarks.bare_server --port P`. GET /stats -> {"frames": n}.
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
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, ws="websockets-sansio", loop="uvloop", log_level="warning",
                ws_ping_interval=20.0, ws_ping_timeout=20.0)
