"""Processes of the real-SGLang tier: SGLang servers, the router and gateways, started and stopped.

This module owns how the tier runs the real things as subprocesses, each in its own process
group so that stopping one also ends its children (SGLang's scheduler and detokenizer), logging
to a file the tests read: `SGLangServer` (`python -m sglang.launch_server --device cpu ...` on
the tiny Gemma 3n), `Router` (`python -m sglang_router.launch_router --worker-urls ...`) and
`Gateway` (`python app.py`, configured by environment variables as the README says). Every one
listens on 127.0.0.1 on a free port, and `stop()` is idempotent and also kills a hung process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
SERVED_MODEL = "google/gemma-3n-E4B-it"
CONTEXT_LENGTH = 8192
# SGLang's scheduler busy-polls a core while idle unless told to sleep (it then wakes on its
# sockets); on a 2-core machine that is the difference between the tier and a stalled machine.
SGLANG_CPU_FLAGS = (
    "--device",
    "cpu",
    "--attention-backend",
    "torch_native",
    "--cuda-graph-backend-decode",
    "disabled",
    "--cuda-graph-backend-prefill",
    "disabled",
    "--dtype",
    "bfloat16",
    "--max-total-tokens",
    str(CONTEXT_LENGTH),
    "--context-length",
    str(CONTEXT_LENGTH),
    "--sleep-on-idle",
)
SGLANG_ENV = {
    "SGLANG_USE_CPU_ENGINE": "1",
    "OMP_NUM_THREADS": "2",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, alive: Callable[[], str | None]
) -> None:
    """Poll `condition` until true; fail early with `alive()`'s reason if the process died."""
    deadline = time.monotonic() + timeout
    while not condition():
        reason = alive()
        if reason is not None:
            raise RuntimeError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.25)


class _Server(Protocol):
    def start(self) -> None: ...
    def wait_ready(self) -> None: ...
    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


@contextlib.contextmanager
def running(server: ServerT) -> Iterator[ServerT]:
    """`server` started and ready for the `with` block, stopped after it (on failure too)."""
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Process:
    """One subprocess in its own session (process group), its output in `log_path`."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, args: Sequence[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(args),
                cwd=cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def exited(self) -> str | None:
        """Why the process is gone (with its log's tail), or None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = "\n".join(self.log().splitlines()[-40:])
        return f"{self.name} exited with {self.proc.returncode}; log tail:\n{tail}"

    def get(self, path: str, timeout: float = 5.0) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=timeout)
        except httpx.HTTPError:
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, not a shutdown."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after `grace` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self._signal(signal.SIGKILL)  # children (scheduler, detokenizer) may outlive the parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class SGLangServer(Process):
    """`python -m sglang.launch_server` on the tiny Gemma 3n, on the CPU."""

    def __init__(
        self,
        python: Path,
        model: Path,
        log_path: Path,
        *extra_args: str,
        api_key: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__("SGLang", log_path)
        if port is not None:
            self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.python = python
        self.model = model
        self.api_key = api_key
        self.extra_args = extra_args

    def start(self) -> None:
        args = [
            str(self.python),
            "-m",
            "sglang.launch_server",
            "--model-path",
            str(self.model),
            "--served-model-name",
            SERVED_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *SGLANG_CPU_FLAGS,
            *self.extra_args,
        ]
        if self.api_key is not None:
            args += ["--api-key", self.api_key]
        self.spawn(args, SGLANG_ENV)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until `/health` (a real one-token generation) answers 200."""

        def healthy() -> bool:
            response = self.get("/health", timeout=30)
            return response is not None and response.status_code == 200

        wait_for(healthy, timeout, f"SGLang on port {self.port}", self.exited)


class Router(Process):
    """`python -m sglang_router.launch_router` in front of real SGLang workers."""

    def __init__(
        self, python: Path, log_path: Path, worker_urls: Sequence[str], *extra_args: str
    ) -> None:
        super().__init__("sglang-router", log_path)
        self.python = python
        self.worker_urls = list(worker_urls)
        self.extra_args = extra_args

    def start(self) -> None:
        args = [
            str(self.python),
            "-m",
            "sglang_router.launch_router",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--worker-urls",
            *self.worker_urls,
            *self.extra_args,
        ]
        self.spawn(args, {"PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 120.0) -> None:
        def answering() -> bool:
            response = self.get("/v1/models")
            return response is not None and response.status_code == 200

        wait_for(answering, timeout, f"sglang-router on port {self.port}", self.exited)


class Gateway(Process):
    """The gateway as the README runs it: `python app.py`, settings from the environment."""

    def __init__(self, log_path: Path, sglang_url: str, **settings: str) -> None:
        super().__init__("gateway", log_path)
        self.env = {
            "SGLANG_URL": sglang_url,
            "MODEL_NAME": SERVED_MODEL,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "HEALTH_POLL_INTERVAL": "0.5",
            "LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            # The Responses store beside the log, not in the checkout's data/
            "RESPONSES_STORE_PATH": str(log_path.with_suffix(".responses.sqlite3")),
            **settings,
        }

    def start(self) -> None:
        self.spawn([sys.executable, str(ROOT / "app.py")], self.env)
        wait_for(lambda: self.get("/health") is not None, 60, "gateway", self.exited)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            response = self.get("/health/ready")
            return response is not None and response.status_code == 200

        wait_for(ready, timeout, f"gateway on port {self.port}", self.exited)
