"""Shared fixtures: a fake SGLang and the real gateway, each served by uvicorn on a real port.

The gateway under test is the product's own `create_app(settings)` served exactly as in
production (uvicorn, real sockets), pointed at `FakeSGLang`, which behaves like SGLang as
../shared/SGLANG.md describes it. Tests therefore exercise the whole HTTP path both ways and can
assert on what the gateway forwarded (`fake.chat_requests`), not only on what came back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
import whisper_factory
from fake_sglang import FakeSGLang

from app import create_app
from gateway.settings import Settings
from gateway.speech.whisper_asr import WhisperTranscriber

MODEL = "google/gemma-3n-E4B-it"


class ServerThread:
    """An ASGI app served by uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def gateway_settings(fake: FakeSGLang, **overrides: Any) -> Settings:
    """Settings for a gateway in front of `fake`, fast health polling, no .env file."""
    values: dict[str, Any] = {
        "sglang_url": fake.url,
        "model_name": MODEL,
        "health_poll_interval": 0.1,
        "upstream_read_timeout": 10.0,
        "responses_store_path": ":memory:",  # tests that need the file give one
        "media_prestart": False,  # most tests start many gateways and send no image
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeSGLang]:
    fake = FakeSGLang(served_model_name=MODEL)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_server: FakeSGLang) -> Iterator[FakeSGLang]:
    """The session's fake SGLang, reset to its defaults for this test."""
    fake_server.reset()
    if not _listening(fake_server.port):
        fake_server.start()
    yield fake_server
    fake_server.reset()
    if not _listening(fake_server.port):
        fake_server.start()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def make_gateway(fake: FakeSGLang) -> Iterator[Callable[..., ServerThread]]:
    """Start a gateway with settings overrides; every one started is stopped after the test."""
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        server = ServerThread(create_app(gateway_settings(fake, **overrides)))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def _session_gateway(fake_server: FakeSGLang) -> Iterator[ServerThread]:
    server = ServerThread(create_app(gateway_settings(fake_server)))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateway(_session_gateway: ServerThread, fake: FakeSGLang) -> ServerThread:
    """The default gateway (shared by the session) in front of a freshly reset fake."""
    return _session_gateway


@pytest.fixture
def http(gateway: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=15) as client:
        yield client


@pytest.fixture
def client(gateway: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=15
    ) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not WhisperTranscriber.is_installed() and os.environ.get("CI") != "true":
        pytest.skip("openai-whisper is not installed (pip install -r requirements-whisper.txt)")
    # A tiny random checkpoint: the real loading code runs, nothing is downloaded.
    whisper_factory.warm_whisper_tokenizers()
    return whisper_factory.build_tiny_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `condition` every 10 ms until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for_log(
    caplog: pytest.LogCaptureFixture, predicate: Callable[[logging.LogRecord], bool]
) -> list[logging.LogRecord]:
    """The matching records, waiting up to 2 s: the access line is written on the server's
    thread after the last byte is sent, so a client can finish reading before it exists."""
    eventually(lambda: any(predicate(record) for record in caplog.records))
    return [record for record in caplog.records if predicate(record)]


@contextmanager
def no_new_chat_requests(fake: FakeSGLang) -> Iterator[None]:
    """Asserts the block sent nothing to SGLang's chat endpoint."""
    before = len(fake.chat_requests)
    yield
    assert len(fake.chat_requests) == before
