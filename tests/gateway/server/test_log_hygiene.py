"""Log lines a client cannot forge or flood (issue 13, finding 4), with the gateway's own
handler and formatter (`configure_logging`'s), whatever module writes the line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import MODEL
from fake_sglang import FakeSGLang

from gateway.server.request_context import LOG_FORMAT, RequestIdFilter, SafeFormatter


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """What the gateway's handler writes, while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def lines(log: io.StringIO) -> list[str]:
    handler = logging.getLogger().handlers[-1]
    handler.flush()
    return log.getvalue().splitlines()


def test_a_newline_cannot_start_a_log_line(http: httpx.Client, log: io.StringIO) -> None:
    forged = "gpt-4\n2026-01-01 00:00:00,000 ERROR gateway [-] FORGED"
    http.post(
        "/v1/chat/completions",
        json={"model": forged, "messages": [{"role": "user", "content": "hi"}]},
    )
    http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": [{"type": "x\r\nFORGED"}]}]},
    )
    http.get("/v1/models/evil%0aFORGED")
    written = lines(log)
    assert any("FORGED" in line for line in written)  # the values are logged, escaped
    assert not any(line.lstrip().startswith(("2026-01-01", "FORGED")) for line in written)
    real = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) \S+ \[")
    assert all(real.match(line) for line in written), written


def test_a_huge_client_value_is_a_short_log_line(http: httpx.Client, log: io.StringIO) -> None:
    huge = "m" * 5_000_000
    response = http.post(
        "/v1/chat/completions",
        json={"model": huge, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 404
    written = lines(log)
    assert written and max(len(line) for line in written) < 2000
    assert sum(len(line) for line in written) < 10_000
    assert any("(5000000 chars)" in line or "chars)" in line for line in written)


def test_exceptions_keep_their_traceback_lines(log: io.StringIO, fake: FakeSGLang) -> None:
    try:
        raise ValueError("boom\nFORGED")
    except ValueError:
        logging.getLogger("gateway").exception("failed with %s", "value\nFORGED")
    written = lines(log)
    assert "failed with value\\nFORGED" in written[0]
    assert any(line.startswith("Traceback") for line in written)  # our own, multi-line
