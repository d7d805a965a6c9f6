"""Metrics and the access line, seen through the whole gateway."""

from __future__ import annotations

import logging

import httpx
import pytest
from conftest import MODEL, wait_for_log
from fake_sglang import FakeSGLang
from prometheus_client.parser import text_string_to_metric_families

CHAT = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def _samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_ttft_and_upstream_errors(
    http: httpx.Client, fake: FakeSGLang
) -> None:
    before = _samples(http)
    assert http.post(CHAT, json=BODY).status_code == 200
    with http.stream("POST", CHAT, json={**BODY, "stream": True}) as stream:
        stream.read()  # no include_usage: the gateway still learns the token counts
    fake.fault = "error_500"
    assert http.post(CHAT, json=BODY).status_code == 500
    after = _samples(http)

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    route = {"route": CHAT, "method": "POST"}
    assert grew("gateway_requests_total", **route, status="200") == 2
    assert grew("gateway_requests_total", **route, status="500") == 1
    assert grew("gateway_completion_tokens_total") == 2 * len(fake.reply_tokens)
    assert grew("gateway_time_to_first_token_seconds_count") == 1
    assert grew("gateway_upstream_errors_total", kind="UpstreamFailed") == 1
    assert _value(after, "gateway_requests_in_flight") == 1  # the /metrics request itself


def test_access_line_names_model_tokens_and_ttft(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    with http.stream("POST", CHAT, json={**BODY, "stream": True}) as stream:
        stream.read()
    records = wait_for_log(
        caplog, lambda r: r.name == "gateway.access" and "ttft_ms" in r.getMessage()
    )
    line = records[-1].getMessage()
    assert line.startswith(f"POST {CHAT} 200 ")
    assert f"model={MODEL}" in line
    assert "tokens=" in line and "ttft_ms=" in line and "key=-" in line
