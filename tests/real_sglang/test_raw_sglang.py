"""Real SGLang's raw answers (no gateway) keep the shapes recorded in the fixture file.

These are the answers the gateway and the fakes are built on (`tests/sglang_cases.py`). With
REAL_SGLANG_RECORD=1 the test (re)writes `tests/fixtures/real_sglang_0.5.21.json` instead of
comparing; `tests/test_fake_sglang.py` holds the fake to the same recording.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import sglang_cases
from sglang_cases import Case, parse_sse, shape, trimmed

from .conftest import SGLANG_API_KEY
from .procs import SGLangServer

RECORD = os.environ.get("REAL_SGLANG_RECORD") == "1"
CASES = sglang_cases.cases()
_recorded: dict[str, Any] = {}


def send(server: SGLangServer, case: Case) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {SGLANG_API_KEY}"} if case.authorized else {}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        response = http.request(case.method, case.path, json=case.body, headers=headers)
    content_type = response.headers.get("content-type")
    answer: dict[str, Any] = {"status": response.status_code, "content_type": content_type}
    if content_type and content_type.startswith("text/event-stream"):
        body: Any = parse_sse(response.text)
        answer["events"] = trimmed(body)
    elif content_type and content_type.startswith("application/json"):
        body = response.json()
        answer["body"] = trimmed(body)
    else:
        body = response.text
        answer["body"] = body
    answer["shape"] = shape(body)
    return answer


@pytest.mark.parametrize("name", list(CASES))
def test_raw_answer_keeps_its_recorded_shape(sglang: SGLangServer, name: str) -> None:
    answer = send(sglang, CASES[name])
    if RECORD:
        _recorded[name] = {"request": trimmed(CASES[name].body), **answer}
        if len(_recorded) == len(CASES):
            sglang_cases.write_fixture(_recorded)
        return
    recorded = sglang_cases.load_fixture()["responses"][name]
    assert answer["status"] == recorded["status"]
    assert answer["content_type"] == recorded["content_type"]
    assert answer["shape"] == recorded["shape"], answer
