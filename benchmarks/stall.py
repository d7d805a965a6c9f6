"""Hostile inputs against `python app.py`: does any of them stall the loop or balloon memory?

Issue 13's proof. A gateway runs as in production (`python app.py`, default settings) in front
of the tests' fake SGLang. While a stream of tokens 10 ms apart flows and
`/health` is asked every 20 ms, each hostile request below is sent, one at a time; for each the
script reports the largest gap between two chunks of that stream, the slowest `/health`, the
gateway's peak resident memory, and the hostile request's status.

    python benchmarks/stall.py                 # the checkout this file is in
    python benchmarks/stall.py --checkout DIR  # another checkout (e.g. the code before a fix)

The fake SGLang and the watchers (the stream, the /health prober, the RSS sampler) run in
processes of their own, so what they see is the gateway's loop, not this script's work.

Not a test: the figures depend on the machine; tests/test_stall.py holds the gateway to the
issue's bounds (50 ms) on the inputs at and over the caps (`--only` picks inputs by name).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

from fake_sglang import FakeSGLang  # noqa: E402  (tests/ is on the path only from here on)

MODEL = "google/gemma-3n-E4B-it"
CHAT = "/v1/chat/completions"


def _chat(**fields: object) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return orjson.dumps(body | fields)


def _parts(count: int) -> bytes:
    content = [{"type": "text", "text": "ab"}] * count
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]})


def _wav(rate: int, frames: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\1" * frames)
    return buffer.getvalue()


def _fitted_conversation(count: int) -> bytes:
    """`count` messages the template would refuse as they are: roles repeat, system mid-way."""
    roles = ["user", "user", "assistant", "developer", "system", "assistant"]
    messages = [{"role": roles[n % len(roles)], "content": f"m{n}"} for n in range(count - 1)]
    messages.append({"role": "user", "content": "hi"})
    return orjson.dumps({"model": MODEL, "messages": messages, "max_tokens": 4})


def _text_at_the_caps() -> bytes:
    """1,024 parts (the per-request cap) in 4 messages of 256 (the per-message cap), 1,000
    characters each: about the 1 MiB text cap, every part merged with its neighbours."""
    part = {"type": "text", "text": "a" * 1000}
    turns = ["user", "assistant", "user", "assistant"]
    messages = [{"role": role, "content": [part] * 256} for role in turns]
    messages.append({"role": "user", "content": "hi"})
    body = {"model": MODEL, "messages": messages, "max_tokens": 4}
    return orjson.dumps(body)


def _big_image() -> bytes:
    """A 20 MB PNG of noise (2,600 x 2,600, incompressible: just under MAX_IMAGE_BYTES) as a
    data URL: the largest image a client may send, decoded and resized by the image workers."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (2600, 2600), os.urandom(2600 * 2600 * 3)).save(
        buffer, "PNG", compress_level=1
    )
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    return _chat(messages=[{"role": "user", "content": content}])


def _tool(index: int) -> dict[str, object]:
    properties = {f"p{n}": {"type": "string", "description": "x" * 40} for n in range(20)}
    return {
        "type": "function",
        "function": {
            "name": f"f{index}",
            "parameters": {"type": "object", "properties": properties},
        },
    }


# name -> the body of one hostile chat request (built when it is sent). Inputs at the caps are
# the worst a client may send and have served; those over a cap show that refusing is cheap.
HOSTILE: dict[str, Callable[[], bytes]] = {
    "1,024 text parts, 1 MB of text (at the caps)": _text_at_the_caps,
    "8,000 text parts (over the cap)": lambda: _parts(8_000),
    "300,000 text parts (9 MB)": lambda: _parts(300_000),
    "1,000,000 text parts (31 MB)": lambda: _parts(1_000_000),
    "1,000 messages to fit to the template": lambda: _fitted_conversation(1000),
    "deep JSON (arrays 190 deep)": lambda: (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "logit_bias": %s}'
        % (MODEL.encode(), b"[" * 190 + b"]" * 190)
    ),
    "a 1 MB string (at the text cap)": lambda: _chat(
        messages=[{"role": "user", "content": "x" * 1_000_000}]
    ),
    "a 60 MB string": lambda: _chat(messages=[{"role": "user", "content": "x" * 60_000_000}]),
    "a 30 MB string": lambda: _chat(messages=[{"role": "user", "content": "x" * 30_000_000}]),
    "a 20 MB image as a data URL (at MAX_IMAGE_BYTES)": _big_image,
    "64 stop sequences, logit_bias of 16,000": lambda: _chat(
        stop=[f"stop{n}" for n in range(64)],
        logit_bias={str(n): 1 for n in range(16_000)},
    ),
    "128 tools of 20 parameters": lambda: _chat(tools=[_tool(n) for n in range(128)]),
}


@dataclass
class Window:
    gaps: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)


class Watchers:
    """The stream, the /health prober and the RSS sampler: three threads in a process of their
    own, so that sending a hostile body (or the fake's work) cannot delay what they see."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.window = Window()
        self.stop = threading.Event()
        self.failure: str | None = None
        self.threads = [
            threading.Thread(target=self._stream, daemon=True),
            threading.Thread(target=self._health, daemon=True),
            threading.Thread(target=self._rss, daemon=True),
        ]

    def _stream(self) -> None:
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": 4000,  # 40 s of tokens 10 ms apart, then the next stream
            "messages": [{"role": "user", "content": "hi"}],
        }
        # A gateway that stalls for minutes (the code before issue 13) must still be measured:
        # a read timeout is a gap as long as the wait, and the stream starts again.
        with httpx.Client(base_url=self.url, timeout=300) as http:
            while not self.stop.is_set():
                last = time.perf_counter()
                try:
                    with http.stream("POST", CHAT, json=body) as stream:
                        if stream.status_code != 200:
                            self.failure = f"the watched stream got {stream.status_code}"
                            return
                        for _ in stream.iter_raw():
                            now = time.perf_counter()
                            self.window.gaps.append(now - last)
                            last = now
                            if self.stop.is_set():
                                return
                except httpx.TransportError:
                    self.window.gaps.append(time.perf_counter() - last)

    def _health(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as http:
            while not self.stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.TransportError):  # the wait is the figure
                    http.get("/health")
                self.window.health.append(time.perf_counter() - started)
                time.sleep(0.02)

    def _rss(self) -> None:
        while not self.stop.is_set():
            self.window.rss_kb.append(rss_kb(self.pid))
            time.sleep(0.05)

    @staticmethod
    def serve(url: str, pid: int, pipe: Connection) -> None:
        """The watchers' process: each message on `pipe` asks for the window so far."""
        watchers = Watchers(url, pid)
        for thread in watchers.threads:
            thread.start()
        while pipe.recv() != "stop":
            window, watchers.window = watchers.window, Window()
            pipe.send((window, watchers.failure))
        watchers.stop.set()


class WatcherProcess:
    def __init__(self, url: str, pid: int) -> None:
        self.pipe, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(
            target=Watchers.serve, args=(url, pid, child), daemon=True
        )
        self.process.start()

    def reset(self) -> Window:
        self.pipe.send("reset")
        window, failure = self.pipe.recv()
        if failure is not None:
            raise RuntimeError(f"the watched stream failed: {failure}")
        return window  # type: ignore[no-any-return]

    def close(self) -> None:
        self.pipe.send("stop")
        self.process.join(timeout=10)


def _fake_process(pipe: Connection) -> None:
    """The fake SGLang in a process of its own: a stream of tokens 10 ms apart."""
    fake = FakeSGLang(served_model_name=MODEL)
    fake.start()
    fake.reply_tokens = ["tok "] * 100_000
    fake.token_delay = 0.01
    pipe.send(fake.url)
    pipe.recv()
    fake.stop()


@contextmanager
def fake_sglang() -> Iterator[str]:
    pipe, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_fake_process, args=(child,))
    process.start()
    try:
        yield pipe.recv()
    finally:
        pipe.send("stop")
        process.join(timeout=10)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextmanager
def gateway(checkout: Path, fake_url: str) -> Iterator[tuple[str, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "SGLANG_URL": fake_url,
        "MODEL_NAME": MODEL,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "RESPONSES_STORE_PATH": ":memory:",
    }
    process = subprocess.Popen([sys.executable, "app.py"], cwd=checkout, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become ready")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(checkout: Path, only: Sequence[str] = ()) -> list[dict[str, object]]:
    """The quiet row, then a row for each input (those whose name contains one of `only`)."""

    def chosen(name: str) -> bool:
        return not only or any(part in name for part in only)

    rows = []
    with (
        fake_sglang() as fake_url,
        gateway(checkout, fake_url) as (url, pid),
        httpx.Client(base_url=url, timeout=300) as http,
    ):
        watchers = WatcherProcess(url, pid)
        try:
            time.sleep(3)
            watchers.reset()  # the watchers' own start-up
            time.sleep(2)
            rows.append(_row("(quiet: no hostile request)", None, watchers.reset()))
            for name, build in HOSTILE.items():
                if not chosen(name):
                    continue
                body = build()
                watchers.reset()
                started = time.perf_counter()
                try:
                    answer = http.post(
                        CHAT, content=body, headers={"content-type": "application/json"}
                    )
                    status: object = answer.status_code
                    if answer.status_code != 200:
                        status = f"{status} {answer.json()['error']['code']}"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                seconds = time.perf_counter() - started
                time.sleep(0.5)
                rows.append(_row(name, status, watchers.reset(), seconds))
            for name, make in UPLOADS.items():
                if not chosen(name):
                    continue
                upload = make()
                watchers.reset()
                rows.append(_transcriptions(http, watchers, name, upload))
        finally:
            watchers.close()
    return rows


UPLOADS = {
    "40 transcriptions at once of a 1.2 kB WAV declaring 1 Hz (599 s)": lambda: _wav(1, 599),
    "40 transcriptions at once of 30 s of 16 kHz WAV": lambda: _wav(16_000, 480_000),
}


def _transcriptions(
    http: httpx.Client, watchers: WatcherProcess, name: str, upload: bytes
) -> dict[str, object]:
    statuses: list[int] = []

    def one() -> None:
        answer = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", upload, "audio/wav")},
            data={"model": MODEL},
        )
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=one) for _ in range(40)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    time.sleep(0.5)
    summary = ",".join(f"{code}x{statuses.count(code)}" for code in sorted(set(statuses)))
    return _row(name, summary, watchers.reset(), seconds)


def _row(name: str, status: object, window: Window, seconds: float = 0.0) -> dict[str, object]:
    return {
        "input": name,
        "status": status,
        "seconds": round(seconds, 2),
        "largest_gap_ms": round(1000 * max(window.gaps, default=0.0), 1),
        "slowest_health_ms": round(1000 * max(window.health, default=0.0), 1),
        "peak_rss_mb": round(max(window.rss_kb, default=0) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--only", action="append", default=[], help="inputs whose name has this (repeatable)"
    )
    args = parser.parse_args()
    rows = measure(args.checkout.resolve(), args.only)
    print(f"{'input':66} {'status':>26} {'s':>6} {'gap ms':>7} {'health ms':>9} {'RSS MB':>7}")
    for row in rows:
        print(
            f"{row['input']:66} {row['status']!s:>26} {row['seconds']:>6} "
            f"{row['largest_gap_ms']:>7} {row['slowest_health_ms']:>9} {row['peak_rss_mb']:>7}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
