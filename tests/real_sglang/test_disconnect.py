"""A client that leaves mid-stream makes the real SGLang abort the generation within 1 s.

Proved from SGLang's own debug log: the scheduler logs "Abort running request. req.rid='<id>'"
when it drops a request, and the gateway's `chatcmpl-<id>` is SGLang's request id.
"""

from __future__ import annotations

import time

import httpx

from .conftest import MODEL
from .procs import Gateway, SGLangServer


def test_client_disconnect_aborts_the_generation_within_a_second(
    gateway: Gateway, sglang: SGLangServer
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 4000,
        "stream": True,
        "ignore_eos": True,  # a random model could stop early; this one must run for minutes
    }
    with (
        httpx.Client(base_url=gateway.url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        rid = first.split('"id":"', 1)[1].split('"', 1)[0].removeprefix("chatcmpl-")
        for _ in range(5):  # a few tokens: the request is now running in SGLang's batch
            next(lines)
        assert f"req.rid='{rid}'" not in sglang.log()
        left_at = time.monotonic()
    # The stream is closed: the gateway closes its upstream connection, SGLang aborts.
    needle = f"Abort running request. req.rid='{rid}'"
    while needle not in sglang.log():
        assert time.monotonic() - left_at < 1.0, "SGLang did not log the abort within 1 s"
        time.sleep(0.02)
