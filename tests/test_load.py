"""Bounded load on one gateway process: 1,000 concurrent slow streams, and flat memory.

The gateway runs as in production, `python app.py` in a subprocess (its own interpreter, event
loop and GIL, so its CPU time and resident memory can be read from /proc), in front of
`FakeSGLang` on a real port in this process. The client is a small HTTP/1.1 client on raw asyncio
sockets: one connection per stream, no connection pool whose bookkeeping would grow with the
number of streams and measure the client instead of the gateway.

Each test prints its figures (wall time, gateway CPU, RSS) and records them as junit properties.
Sized for a shared 2-core box: both tests together take well under two minutes.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import uvloop
from conftest import MODEL
from fake_sglang import FakeSGLang

pytestmark = pytest.mark.load
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

STREAMS = 1000
# Descriptors each process needs: a socket per stream on each side of it, plus its own.
FDS_NEEDED = 2 * STREAMS + 500
STREAM_TOKENS = [f"tok{i} " for i in range(20)]
TOKEN_DELAY = 0.05

MEMORY_REQUESTS = 10_000
MEMORY_WARMUP = 1_000
MEMORY_CONCURRENCY = 32
# Allowed RSS growth between request 1,000 and 10,000. A leak of 1 KB per request (one forgotten
# dict of headers or one chunk list) would add ~9 MB over those 9,000 requests and fail; what
# legitimately moves RSS after warm-up (pymalloc arenas and glibc heaps settling, the upstream
# pool's buffers) is ~1-3 MB on this box.
MEMORY_GROWTH_LIMIT_MB = 8.0


def _raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, here and (inherited) in every child process.

    1,000 streams hold ~2,000 descriptors in each process: the client's and the fake's sockets
    here, the client-side and upstream sockets in the gateway.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayProcess:
    """`python app.py` in a subprocess, with /proc accounting."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM): resident memory now, and its peak since the start."""
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024  # kB
        return values["VmRSS"], values["VmHWM"]

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def open_files_limit(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-files limit in /proc/<pid>/limits")


@contextmanager
def gateway_process(fake: FakeSGLang, **env: str) -> Iterator[GatewayProcess]:
    """A gateway subprocess in front of `fake`, ready to serve; stopped (SIGTERM) afterwards."""
    port = _free_port()
    environment = {
        **os.environ,
        "SGLANG_URL": fake.url,
        "MODEL_NAME": MODEL,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
        "RESPONSES_STORE_PATH": ":memory:",  # nothing written into the checkout
        **env,
    }
    process = subprocess.Popen(  # the rlimit raised above is inherited
        [sys.executable, "app.py"], cwd=ROOT, env=environment, stdin=subprocess.DEVNULL
    )
    gateway = GatewayProcess(process, port)
    try:
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=gateway.url, timeout=2) as http:
            while True:
                assert process.poll() is None, f"the gateway exited with {process.returncode}"
                with suppress(httpx.TransportError):
                    if http.get("/health/ready").status_code == 200:
                        break
                assert time.monotonic() < deadline, "the gateway did not become ready"
                time.sleep(0.1)
        yield gateway
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


# --- a minimal HTTP/1.1 client ------------------------------------------------------------------


def _request_bytes(body: dict[str, object], *, close: bool) -> bytes:
    payload = orjson.dumps(body)
    return (
        b"POST %s HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
        % (CHAT.encode(), len(payload), b"Connection: close\r\n" if close else b"", payload)
    )


@dataclass
class Answer:
    status: int
    body: bytes
    first_body_at: float  # time.perf_counter() when the first body byte arrived
    done_at: float


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response: Content-Length or chunked (no trailers), as uvicorn sends them."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = head.lower()
    body = bytearray()
    first_body_at = 0.0
    if b"\r\ntransfer-encoding: chunked\r\n" in headers:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if not first_body_at:
                first_body_at = time.perf_counter()
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += (await reader.readexactly(size + 2))[:-2]
    else:
        length = int(headers.split(b"\r\ncontent-length: ", 1)[1].split(b"\r\n", 1)[0])
        body += await reader.readexactly(length)
        first_body_at = time.perf_counter()
    return Answer(status, bytes(body), first_body_at, time.perf_counter())


def _stream_contents(body: bytes) -> list[str]:
    """The content tokens of an OpenAI stream, checking its framing: role first, a finish
    chunk, the usage chunk if any, `[DONE]` last, no error event."""
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]", events[-2:]
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all("error" not in chunk for chunk in chunks), chunks[-1]
    if not chunks[-1]["choices"]:  # stream_options.include_usage
        usage = chunks.pop()["usage"]
        assert usage["completion_tokens"] == len(chunks) - 2
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    return [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-1]]


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine function on a fresh uvloop (the cheapest client loop)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _report(record_property: Callable[[str, object], None], figures: dict[str, object]) -> None:
    for name, value in figures.items():
        record_property(name, value)
    print("\n" + ", ".join(f"{name}={value}" for name, value in figures.items()))


# --- the tests ----------------------------------------------------------------------------------


def test_a_thousand_concurrent_slow_streams_through_one_gateway(
    fake: FakeSGLang, record_property: Callable[[str, object], None]
) -> None:
    limit = _raise_fd_limit()
    assert limit >= FDS_NEEDED, f"RLIMIT_NOFILE is {limit}; {STREAMS} streams need {FDS_NEEDED}"
    # All streams start their tokens together once all of them are open upstream (SGLang runs
    # them as one batch): they are held concurrently however slowly the box admits them.
    fake.reply_tokens, fake.token_delay = STREAM_TOKENS, TOKEN_DELAY
    fake.start_together = STREAMS
    request = _request_bytes({"model": MODEL, "messages": HELLO, "stream": True}, close=True)

    with gateway_process(fake, MAX_IN_FLIGHT=str(2 * STREAMS)) as gateway:
        assert gateway.open_files_limit() >= FDS_NEEDED
        rss_before, _ = gateway.memory_mb()
        fds_before = gateway.open_fds()
        cpu_before = gateway.cpu_seconds()
        client_cpu_before = _own_cpu_seconds()
        peak_upstream = peak_fds = 0

        async def one() -> Answer:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                writer.write(request)
                return await _read_answer(reader)
            finally:
                writer.close()

        async def watch() -> None:
            nonlocal peak_upstream, peak_fds
            while True:
                peak_upstream = max(peak_upstream, fake.active_chat_requests)
                peak_fds = max(peak_fds, gateway.open_fds())
                await asyncio.sleep(0.05)

        async def main() -> list[Answer | BaseException]:
            watcher = asyncio.create_task(watch())
            try:
                async with asyncio.timeout(90):
                    return await asyncio.gather(
                        *(one() for _ in range(STREAMS)), return_exceptions=True
                    )
            finally:
                watcher.cancel()

        started = time.perf_counter()
        answers = _run(main)
        elapsed = time.perf_counter() - started
        cpu = gateway.cpu_seconds() - cpu_before
        client_cpu = _own_cpu_seconds() - client_cpu_before
        rss_after, rss_peak = gateway.memory_mb()
        # Clean-up: every socket is let go (the idle upstream pool within its 4 s keep-alive).
        settled = _wait_until(lambda: gateway.open_fds() <= fds_before + 10, timeout=15)
        fds_after = gateway.open_fds()

    failures = [a for a in answers if not isinstance(a, Answer)]
    assert not failures, f"{len(failures)} streams failed, e.g. {failures[0]!r}"
    ok = [a for a in answers if isinstance(a, Answer)]
    assert [a.status for a in ok] == [200] * STREAMS
    for answer in ok:
        assert _stream_contents(answer.body) == STREAM_TOKENS  # every token, in order
    assert len(fake.chat_requests) == STREAMS  # one upstream request each, no retries
    assert fake.active_chat_requests == 0

    first_bytes = sorted(a.first_body_at - started for a in ok)
    ends = sorted(a.done_at - started for a in ok)
    lengths = sorted(a.done_at - a.first_body_at for a in ok)
    _report(
        record_property,
        {
            "streams": STREAMS,
            "tokens_per_stream": len(STREAM_TOKENS),
            "token_delay_ms": round(TOKEN_DELAY * 1000),
            "peak_upstream_streams": peak_upstream,
            "wall_s": round(elapsed, 2),
            "first_byte_s_min_max": f"{first_bytes[0]:.2f}-{first_bytes[-1]:.2f}",
            "first_stream_end_s": round(ends[0], 2),
            "stream_s_ideal": round(TOKEN_DELAY * (len(STREAM_TOKENS) - 1), 2),
            "stream_s_p50_p99_max": "/".join(
                f"{lengths[int(q * (STREAMS - 1))]:.2f}" for q in (0.5, 0.99, 1.0)
            ),
            "gateway_cpu_s": round(cpu, 2),
            "gateway_cpu_ms_per_1000_tokens": round(cpu * 1e6 / (STREAMS * len(STREAM_TOKENS))),
            "client_and_fake_cpu_s": round(client_cpu, 2),
            "gateway_rss_before_mb": round(rss_before, 1),
            "gateway_rss_after_mb": round(rss_after, 1),
            "gateway_rss_peak_mb": round(rss_peak, 1),
            "gateway_fds_before_peak_after": f"{fds_before}/{peak_fds}/{fds_after}",
        },
    )
    assert peak_upstream == STREAMS
    # Held at once end to end too: every client had its stream before the first one ended.
    assert first_bytes[-1] < ends[0]
    assert settled, f"the gateway still holds {fds_after} descriptors (had {fds_before})"


def test_memory_is_flat_over_ten_thousand_requests(
    fake: FakeSGLang, record_property: Callable[[str, object], None]
) -> None:
    _raise_fd_limit()
    expected = list(fake.reply_tokens)
    chat: dict[str, object] = {"model": MODEL, "messages": HELLO}
    streamed = {**chat, "stream": True}
    with_usage = {**streamed, "stream_options": {"include_usage": True}}
    unknown_model = {**chat, "model": "gpt-4o"}  # the error path: 404, nothing sent upstream
    # A cycle of ten: five plain, four streamed (two with a usage chunk), one refused. Each
    # worker keeps its connection alive, as the OpenAI SDK's pool does.
    cycle = [chat, streamed, chat, with_usage, chat, streamed, chat, with_usage, chat]
    requests = [_request_bytes(body, close=False) for body in [*cycle, unknown_model]]

    with gateway_process(fake) as gateway:
        rss_start, _ = gateway.memory_mb()
        cpu_before = gateway.cpu_seconds()
        readings: dict[int, float] = {}
        sent = 0
        statuses: dict[int, int] = {}

        async def worker(until: int) -> None:
            """One keep-alive connection: a request after another until `until` were sent."""
            nonlocal sent
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            try:
                while sent < until:
                    kind = sent % len(requests)
                    sent += 1
                    writer.write(requests[kind])
                    answer = await _read_answer(reader)
                    statuses[answer.status] = statuses.get(answer.status, 0) + 1
                    if answer.status != 200:
                        continue
                    if kind < len(cycle) and cycle[kind].get("stream"):
                        assert _stream_contents(answer.body) == expected
                    else:
                        message = orjson.loads(answer.body)["choices"][0]["message"]
                        assert message["content"] == "".join(expected)
            finally:
                writer.close()

        async def main() -> None:
            for until in (MEMORY_WARMUP, MEMORY_REQUESTS // 2, MEMORY_REQUESTS):
                async with asyncio.timeout(120):
                    await asyncio.gather(*(worker(until) for _ in range(MEMORY_CONCURRENCY)))
                readings[until] = gateway.memory_mb()[0]

        started = time.perf_counter()
        _run(main)
        elapsed = time.perf_counter() - started
        cpu = gateway.cpu_seconds() - cpu_before
        _, rss_peak = gateway.memory_mb()

    refused = MEMORY_REQUESTS // len(requests)
    assert statuses == {200: MEMORY_REQUESTS - refused, 404: refused}
    assert len(fake.chat_requests) == MEMORY_REQUESTS - refused
    assert fake.active_chat_requests == 0
    growth = readings[MEMORY_REQUESTS] - readings[MEMORY_WARMUP]
    _report(
        record_property,
        {
            "requests": MEMORY_REQUESTS,
            "concurrency": MEMORY_CONCURRENCY,
            "wall_s": round(elapsed, 2),
            "req_per_s": round(MEMORY_REQUESTS / elapsed),
            "gateway_cpu_ms_per_request": round(cpu * 1000 / MEMORY_REQUESTS, 2),
            "gateway_rss_start_mb": round(rss_start, 1),
            **{f"gateway_rss_after_{n}_mb": round(mb, 1) for n, mb in readings.items()},
            "gateway_rss_peak_mb": round(rss_peak, 1),
            "growth_mb": round(growth, 2),
        },
    )
    assert growth < MEMORY_GROWTH_LIMIT_MB
