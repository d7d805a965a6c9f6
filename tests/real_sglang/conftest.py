"""Fixtures of the real-SGLang tier: the cached install, the tiny Gemma 3n, SGLang, the gateway.

Everything here is real: SGLang 0.5.21 on the CPU (`scripts/install-real-sglang.sh` installs it
into a venv outside the checkout) serving a tiny random Gemma 3n built in this session by
`tiny_gemma3n.py`, and the gateway run as the README says (`python app.py`, environment
settings), driven by the `openai` SDK. The servers are package-scoped: they start once, when the
tier's first test needs them, and stop when its last test is done (also on failure), so nothing
keeps a core busy while the rest of the suite runs.

Without the cached install the tier skips, saying how to install it; under CI=true a missing
install fails instead (`.ci/run` runs the install script first).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .procs import SERVED_MODEL, Gateway, SGLangServer, running

TIER = Path(__file__).resolve().parent
REAL_SGLANG_HOME = Path(
    os.environ.get("REAL_SGLANG_HOME") or Path.home() / ".cache/gemma3n-gateway/real-sglang"
)
SGLANG_API_KEY = "sk-real-sglang-tier"
INSTALL_HINT = "bash scripts/install-real-sglang.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TIER in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.real_sglang)


def _installed_python() -> Path:
    """The SGLang venv's python, from the READY file the install script writes last."""
    ready = REAL_SGLANG_HOME / "READY"
    python = Path(ready.read_text().splitlines()[0]) if ready.is_file() else None
    if python is None or not python.is_file():
        message = f"real SGLang is not installed in {REAL_SGLANG_HOME} (run {INSTALL_HINT})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true: .ci/run must install it")
        pytest.skip(message)
    return python


@pytest.fixture(scope="package")
def sglang_python() -> Path:
    return _installed_python()


@pytest.fixture(scope="package")
def tiny_model(sglang_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma 3n checkpoint, built once per session (about 10 s)."""
    out = tmp_path_factory.mktemp("tiny-gemma-3n")
    done = subprocess.run(
        [str(sglang_python), str(TIER / "tiny_gemma3n.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


@pytest.fixture(scope="package")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-sglang-logs")


@pytest.fixture(scope="package")
def sglang(sglang_python: Path, tiny_model: Path, logs: Path) -> Iterator[SGLangServer]:
    """The tier's main SGLang: API key set, metrics on, debug log (it names aborted requests)."""
    server = SGLangServer(
        sglang_python,
        tiny_model,
        logs / "sglang-main.log",
        "--enable-metrics",
        "--log-level",
        "debug",
        # xgrammar otherwise lets a random model emit JSON whitespace without end
        "--constrained-json-disable-any-whitespace",
        api_key=SGLANG_API_KEY,
    )
    with running(server):
        yield server


@pytest.fixture(scope="package")
def gateway(sglang: SGLangServer, logs: Path) -> Iterator[Gateway]:
    """The gateway in front of the main SGLang, forwarding its API key."""
    gw = Gateway(
        logs / "gateway-main.log",
        sglang.url,
        SGLANG_API_KEY=SGLANG_API_KEY,
        # The http-image test serves its image from 127.0.0.1.
        MEDIA_ALLOW_PRIVATE_ADDRESSES="true",
        DEFAULT_MAX_TOKENS="16",
    )
    with running(gw):
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


@pytest.fixture
def upstream(sglang: SGLangServer) -> Iterator[httpx.Client]:
    """Raw HTTP straight to SGLang, with its key."""
    headers = {"Authorization": f"Bearer {SGLANG_API_KEY}"}
    with httpx.Client(base_url=sglang.url, headers=headers, timeout=120) as http:
        yield http


MODEL = SERVED_MODEL
