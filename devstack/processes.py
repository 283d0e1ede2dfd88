"""A child process of ours (streamer, simulator, functions host) with its log in a file and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


class ChildProcess:
    def __init__(self, module: str, env: dict[str, str], *, args: list[str] | None = None,
                 log_path: Path | None = None):
        self.module = module
        self.env = {**os.environ, **env}
        self.args = args or []
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"{module.replace('.', '-')}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, health_url: str | None = None, timeout: float = 30.0) -> ChildProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], env=self.env, cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if health_url:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                try:
                    if httpx.get(health_url, timeout=1.0).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.module} not healthy after {timeout}s:\n{self.log()[-3000:]}")
                time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
