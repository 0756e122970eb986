"""`transformers serve` alone as a managed subprocess, for tools that need a raw backend for a block of code.

Users get the full deployment (gateway, state file, stop/status) from onestop.deploy.service.

    with ServedModel("runs/x/model") as served:
        OpenAI(base_url=served.base_url, api_key="-").chat.completions.create(model=served.model_name, ...)

It binds 127.0.0.1, waits until /health answers, and stops the process (terminate, then kill) on exit.
"""

import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from omegaconf import OmegaConf

from onestop.core.errors import OnestopError
from onestop.deploy.backends import free_port, hf_home, transformers_command


class ServedModel:
    """A local model directory served by `transformers serve` on 127.0.0.1."""

    def __init__(self, model_dir: str | Path, port: int | None = None, startup_timeout: float = 180.0):
        self.model_dir = str(Path(model_dir).absolute())
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.model_dir

    def start(self) -> "ServedModel":
        backend = OmegaConf.create({"device": "cpu", "dtype": "auto", "continuous_batching": False})
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            transformers_command(Path(self.model_dir), self.port, backend),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HOME": str(hf_home()), "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise OnestopError(f"transformers serve exited with status {status}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise OnestopError(f"transformers serve did not answer /health within {self.startup_timeout:.0f} s")

    def log_tail(self, chars: int = 1500) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return " ".join(self._log.read()[-chars:].split())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServedModel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
