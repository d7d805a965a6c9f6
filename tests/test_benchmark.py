"""The one-command benchmark (`benchmarks/run.py`) and its fake SGLang (`fake_backend.py`).

The fake is checked directly, with the openai SDK and raw HTTP, for SGLang 0.5's shapes: the
benchmark's figures mean something only if the gateway sees what SGLang sends. Then
`run.py --quick --skip-media` runs against the real gateway (`python app.py` in a subprocess) and
must end with every scenario measured on both paths, no error and no incomplete answer anywhere,
and its JSON and text saved; `--quick --scenarios sweep,soak` must bring the sweep's figures for
each N (streams held open, then loaded) and the soak's RSS trace, again without an error. About
25 s and 15 s on a 2-core box.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.load

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCENARIOS = ("a", "b", "c", "d", "e", "e1000")
MESSAGES: Any = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say something."},
]
BARE_HEX_ID = re.compile(r"[0-9a-f]{32}")
RUN_LIMIT = 120  # seconds; the quick run takes about 20
SOAK_GOAL = "soak: memory flat under load, growth over the 2nd half"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def backend() -> Iterator[str]:
    """The fake backend, as run.py starts it: its own process on a free port."""
    port = _free_port()
    script = str(BENCHMARKS / "fake_backend.py")
    with subprocess.Popen(
        [sys.executable, script, "--port", str(port)], stdout=subprocess.DEVNULL
    ) as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield url
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def sdk(backend: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{backend}/v1", api_key="sk-bench-1234", max_retries=0, timeout=10
    ) as client:
        yield client


def test_fake_backend_answers_like_sglang(sdk: openai.OpenAI, backend: str) -> None:
    completion = sdk.chat.completions.create(model="m-1", messages=MESSAGES, max_tokens=5)
    assert BARE_HEX_ID.fullmatch(completion.id)
    assert completion.model == "m-1"
    assert completion.choices[0].message.content == "tok " * 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5

    body = {"model": "m-1", "messages": MESSAGES, "max_completion_tokens": 2}
    raw = httpx.post(f"{backend}/v1/chat/completions", json=body).json()
    assert raw["object"] == "chat.completion"
    assert raw["choices"][0]["message"] == {
        "role": "assistant",
        "content": "tok tok ",
        "reasoning_content": None,
        "tool_calls": None,
    }
    assert raw["choices"][0]["matched_stop"] is None
    assert raw["usage"]["prompt_tokens_details"] is None
    assert raw["usage"]["reasoning_tokens"] == 0
    assert raw["metadata"] == {
        "weight_version": "default",
        "weight_versions": [{"version": "default", "start": 0, "end": 2}],
    }


def test_fake_backend_streams_like_sglang(sdk: openai.OpenAI, backend: str) -> None:
    stream = sdk.chat.completions.create(
        model="m-1",
        messages=MESSAGES,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1
    assert BARE_HEX_ID.fullmatch(chunks[0].id)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [chunk.choices[0].delta.content for chunk in chunks[1:4]] == ["tok "] * 3
    assert chunks[4].choices[0].finish_reason == "length"
    assert chunks[5].choices == []
    assert chunks[5].usage is not None
    assert chunks[5].usage.completion_tokens == 3
    assert len(chunks) == 6

    body = {"model": "m-1", "messages": MESSAGES, "max_tokens": 1, "stream": True}
    with httpx.stream("POST", f"{backend}/v1/chat/completions", json=body) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    token = json.loads(events[1].removeprefix("data: "))
    assert "usage" not in token  # SGLang 0.5.21's compact chunks
    assert token["choices"][0]["matched_stop"] is None
    assert token["choices"][0]["delta"] == {"reasoning_content": None, "content": "tok "}
    assert len(events) == 4  # role, token, finish, [DONE]: no usage chunk unless asked


def test_fake_backend_control_routes(backend: str) -> None:
    info = httpx.get(f"{backend}/model_info").json()
    assert info["has_image_understanding"] is True
    assert info["has_audio_understanding"] is True
    assert httpx.get(f"{backend}/v1/models").json()["data"][0]["id"] == "fake-model"
    before = httpx.get(f"{backend}/fake/stats").json()
    assert httpx.post(f"{backend}/fake/config", json={"delay_ms": 20}).status_code == 200
    try:
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 3, "stream": True}
        started = time.monotonic()
        assert httpx.post(f"{backend}/v1/chat/completions", json=body).text.count('"tok ') == 3
        assert time.monotonic() - started >= 0.04  # three ticks of the shared 20 ms clock
    finally:
        httpx.post(f"{backend}/fake/config", json={"delay_ms": 0})
    after = httpx.get(f"{backend}/fake/stats").json()
    assert after["streams_completed"] == before["streams_completed"] + 1
    assert httpx.post(f"{backend}/fake/config", json={"delay_ms": -1}).status_code == 400


def _run_quick(out: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """run.py --quick --skip-media; on overtime, SIGTERM so that it stops what it started."""
    argv = [
        sys.executable,
        str(BENCHMARKS / "run.py"),
        "--quick",
        "--skip-media",
        "--out",
        str(out),
        *more,
    ]
    with subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=RUN_LIMIT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
            pytest.fail(f"run.py took over {RUN_LIMIT} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def test_quick_run_measures_every_scenario_without_errors(tmp_path: Path) -> None:
    done = _run_quick(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [saved] = tmp_path.glob("run-*.json")
    assert "goals" in saved.with_suffix(".txt").read_text()
    result = json.loads(saved.read_text())

    assert set(result["scenarios"]) == set(SCENARIOS)
    for key in SCENARIOS:
        for path in ("direct", "gateway"):
            figures = result["scenarios"][key][path]
            assert figures["errors"] == 0, (key, path, figures["error_reasons"])
            assert figures["incomplete"] == 0, (key, path, figures["incomplete_reasons"])
            assert figures["completed"] == figures["sent"] > 0, (key, path)
            assert figures["latency_p50_ms"] > 0, (key, path)
        gateway = result["scenarios"][key]["gateway"]
        assert gateway["upstream_chat_requests"] >= gateway["completed"]
        assert gateway["gateway_cpu_s"] is not None
        assert gateway["gateway_peak_rss_mb"] > 0
    scenarios = result["scenarios"]
    assert scenarios["b"]["gateway"]["requests_per_s"] > 0
    assert scenarios["b"]["gateway"]["gateway_cpu_ms_per_request"] > 0
    assert scenarios["c"]["gateway"]["ttft_p50_ms"] > 0
    assert scenarios["d"]["gateway"]["tokens_per_s"] > 0
    for key in ("e", "e1000"):
        assert scenarios[key]["gateway"]["tokens_pct_of_ideal"] > 0
        assert scenarios[key]["gateway"]["gap_p99_ms"] > 0
        assert scenarios[key]["gateway"]["stall_pct"] is not None
        assert scenarios[key]["gateway"]["gateway_cpu_ms_per_1k_tokens"] > 0

    assert 0 < result["gateway"]["startup_s"] < 30
    assert result["gateway"]["idle_rss_mb"] > 0
    assert result["memory"]["hwm_mb"] >= result["memory"]["idle_rss_mb"]
    statuses = {goal["goal"]: goal["status"] for goal in result["goals"]}
    assert len(statuses) == 10
    assert statuses.pop(SOAK_GOAL) == "NOT RUN"  # opt-in
    assert set(statuses.values()) <= {"PASS", "MISS"}
    assert "sweep" not in result
    assert "soak" not in result


def _no_failures(figures: dict[str, Any], where: object) -> None:
    assert figures["errors"] == 0, (where, figures["error_reasons"])
    assert figures["incomplete"] == 0, (where, figures["incomplete_reasons"])
    assert figures["completed"] == figures["sent"] > 0, where


def test_quick_sweep_and_soak_measure_each_point_without_errors(tmp_path: Path) -> None:
    done = _run_quick(tmp_path, "--scenarios", "sweep,soak")
    assert done.returncode == 0, done.stderr[-3000:]
    [saved] = tmp_path.glob("run-*.json")
    text = saved.with_suffix(".txt").read_text()
    assert "sweep: N streams" in text
    assert "sweep, held" in text
    assert "soak:" in text
    result = json.loads(saved.read_text())
    assert "scenarios" not in result
    assert result["meta"]["open_files"]["warning"] is None

    sweep = result["sweep"]
    assert [point["streams"] for point in sweep["points"]] == sweep["streams"] == [4, 16]
    for point in sweep["points"]:
        streams, held, load = point["streams"], point["held"], point["load"]
        _no_failures(held, ("held", streams))
        _no_failures(load, ("load", streams))
        assert held["held_open_at_backend"] == streams
        assert load["tokens_pct_of_ideal"] > 0
        assert load["gap_p99_ms"] > 0
        assert load["ttft_p50_ms"] > 0
        assert load["gateway_cpu_ms_per_1k_tokens"] > 0
        for figures in (held, load):
            assert figures["gateway_cpu_pct"] is not None
            assert figures["gateway_rss_end_mb"] > 0
            assert figures["rss_per_stream_kb"] is not None
        assert point["gateway"]["idle_rss_mb"] > 0

    soak = result["soak"]["figures"]
    _no_failures(soak, "soak")
    assert soak["tokens"] > 0
    assert soak["rss_samples"] >= 5
    for key in ("start", "25pct", "50pct", "75pct", "end", "max"):
        assert soak[f"rss_{key}_mb"] > 0, key
    assert soak["rss_max_mb"] >= soak["rss_end_mb"]
    assert soak["growth_second_half_mb"] == pytest.approx(soak["rss_end_mb"] - soak["rss_50pct_mb"])
    assert soak["growth_second_half_mb_per_min"] is not None
    statuses = {goal["goal"]: goal["status"] for goal in result["goals"]}
    assert statuses[SOAK_GOAL] in {"PASS", "MISS"}
    assert statuses["idle RSS"] in {"PASS", "MISS"}  # the first fresh gateway's
