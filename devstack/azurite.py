"""Start and stop a real Azurite (Blob, and Queue unless told not to) on loopback ports — for tests, the demo and
benchmarks.

Installed by scripts/bootstrap.sh under .tools/azurite. Blob and Queue are two processes (`azurite-blob`,
`azurite-queue`), each on its own free loopback port, sharing one `--location` (their files do not overlap, as under
the all-in-one `azurite`). Both start in parallel: ~1.1–1.5 s together against ~0.9–1.0 s for Blob alone on the
two-core machine, so the queue is on by default; `Azurite(queues=False)` starts Blob only and its connection string
then names no queue endpoint. `--skipApiVersionCheck` because the Python SDK is newer than the newest Azurite that
runs on Node 20 (see local-toolchain notes in the README).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from devstack.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_QUEUE_BIN = AZURITE_BIN.with_name("azurite-queue")
ACCOUNT = "devstoreaccount1"
# Azurite's published well-known development key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_COMMON_ARGS = ("--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry")


class Azurite:
    def __init__(self, port: int | None = None, location: str | Path | None = None, *, queues: bool = True,
                 queue_port: int | None = None):
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"Azurite not installed at {AZURITE_BIN}; run scripts/bootstrap.sh")
        if queues and not AZURITE_QUEUE_BIN.exists():
            raise RuntimeError(f"Azurite's queue service not installed at {AZURITE_QUEUE_BIN}; run "
                               "scripts/bootstrap.sh")
        self.port = port or free_port()
        self.queues = queues
        self.queue_port = (queue_port or free_port()) if queues else None
        self._own_dir = location is None
        self.location = Path(location or tempfile.mkdtemp(prefix="azurite-"))
        self.proc: subprocess.Popen[bytes] | None = None  # the blob service (benchmarks sample its CPU)
        self.queue_proc: subprocess.Popen[bytes] | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        if self.queue_port is None:
            raise RuntimeError("this Azurite runs without its queue service (queues=False)")
        return f"http://127.0.0.1:{self.queue_port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        queue = f"QueueEndpoint={self.queue_endpoint};" if self.queues else ""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};{queue}"
        )

    def _spawn(self, binary: Path, service: str, port: int, log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.location / log_name, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(
                [str(binary), f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port),
                 "--location", str(self.location), *_COMMON_ARGS],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()

    def start(self, timeout: float = 60.0) -> Azurite:
        """Starts whichever service is not running (a fault test restarts the blob service alone; a second queue
        process could not bind the port and would only leak the first)."""
        self.location.mkdir(parents=True, exist_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._spawn(AZURITE_BIN, "blob", self.port, "azurite.log")
        if self.queue_port is not None and (self.queue_proc is None or self.queue_proc.poll() is not None):
            self.queue_proc = self._spawn(AZURITE_QUEUE_BIN, "queue", self.queue_port, "azurite-queue.log")
        try:
            wait_for_port(self.port, timeout)
            if self.queue_port is not None:
                wait_for_port(self.queue_port, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Stops both services (an outage of the whole account, as the fault tests want)."""
        self._stop(self.proc, timeout)
        self._stop(self.queue_proc, timeout)
        self.proc = self.queue_proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.location, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
