"""A minimal asyncio WebSocket client that costs the load generator almost nothing per frame.

Hundreds of real-time streams from one Python process on a 2-core machine only work if the client is cheap: the
handshake is written by hand, frames use an all-zero masking key (legal: RFC 6455 only asks that a key be sent),
so the payload goes out as is, and the only thing read back is pings (answered) and closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct


class HandshakeError(Exception):
    def __init__(self, status: int):
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status


def _client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\x00\x00\x00\x00" + payload


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self._reader_task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, host: str, port: int, path: str, headers: dict[str, str]) -> RawWebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = await reader.readline()
        status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if status != 101:
            writer.close()
            raise HandshakeError(status)
        return cls(reader, writer)

    def send_text(self, payload: str | bytes) -> None:
        """Queue one text frame (no await: the caller drains when it wants backpressure)."""
        data = payload.encode() if isinstance(payload, str) else payload
        self.writer.write(_client_frame(0x1, data))

    async def drain(self) -> None:
        await self.writer.drain()

    async def _read(self) -> None:
        try:
            while True:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(n)
                opcode = b0 & 0x0F
                if opcode == 0x9:
                    self.writer.write(_client_frame(0xA, payload))
                elif opcode == 0x8:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    if not self.writer.is_closing():
                        self.writer.write(_client_frame(0x8, payload[:2]))
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            if self.close_code is None:
                self.close_code = 1006

    async def close(self, code: int = 1000, timeout: float = 10.0) -> None:
        if self.close_code is None and not self.writer.is_closing():
            self.writer.write(_client_frame(0x8, struct.pack("!H", code)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._reader_task)
        self._reader_task.cancel()
        self.writer.close()

    def abort(self) -> None:
        self._reader_task.cancel()
        self.writer.transport.abort()
