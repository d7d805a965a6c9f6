"""One-command benchmark of the gateway's own cost, in front of a fake SGLang.

Owns the run: it starts `fake_backend.py` and the gateway (`python app.py`) on free 127.0.0.1
ports, the gateway pinned to its own core (`--proxy-cpu`, default 1) and the backend and this
process, the load generator, on the other (`--client-cpu`, default 0). Each scenario is measured
twice, client -> backend (`direct`) and client -> gateway -> backend (`gateway`), so the report
shows what the gateway adds:

  a      non-streaming, 1 connection: latency p50/p90/p99, added p50, gateway CPU per request
  b      non-streaming, 64 connections: requests/s, p50/p99, gateway CPU per request
  c      streaming 64 tokens at 0 ms/token, 1 connection: TTFT p50/p99, total p50, added TTFT
  d      streaming 64 tokens, 64 connections: tokens/s, gateway CPU per 1,000 tokens
  e      256 streams x 50 tokens at 20 ms/token on one shared clock: tokens/s and % of ideal,
         token gap p99/p99.9, stalls, gateway CPU per 1,000 tokens and % of a core, peak RSS
  e1000  the same with 1,000 streams: every stream must bring its 50 tokens and [DONE]
  media  benchmarks/bench_images.py and bench_audio.py, pinned to the gateway's core

plus the gateway's start-up time and memory (idle, after the run, peak). Two more scenarios run
on the gateway path only, each on a freshly started gateway (so that its idle RSS is a true
baseline), and only when asked for (`--scenarios sweep,soak`, or `all`: about 3 minutes more):

  sweep  how the cost grows with concurrency: for each N of `--sweep-streams` (64, 256, 512,
         1000, 2000), first N streams held open but nearly idle (6 tokens at 1,000 ms/token:
         gateway RSS and CPU % while holding them, checked open at the backend), then N streams
         x 50 tokens at 20 ms/token as in e: tokens/s and % of ideal, gateway CPU % and ms per
         1,000 tokens, RSS at the window's end and per stream above idle, gap p99, TTFT p50
  soak   the e load for `--soak-seconds` (60), the gateway's RSS sampled every second: RSS at
         the start, 25/50/75 %, end and max, and the growth over the second half (goal: < 2 MB)

(with --quick: N of 4 and 16 and a 2 s soak, of 16 streams).

The gateway runs with its default settings (API keys on, access log at info), except that a
sweep point above its default MAX_IN_FLIGHT and UPSTREAM_MAX_CONNECTIONS (1,024) raises both to
N + 64, so that no stream is refused. This process raises its open-files limit (RLIMIT_NOFILE,
inherited by the children) as far as the hard limit allows; if that is below what the largest N
needs, the report says so. The result is printed as tables with a goals check and saved as
`benchmarks/results/run-<UTC time>.json` and `.txt`.

    .venv/bin/python benchmarks/run.py                       # a to e1000 and media, minutes
    .venv/bin/python benchmarks/run.py --quick --skip-media  # a smoke test, about 20 s
    .venv/bin/python benchmarks/run.py --scenarios sweep,soak --skip-media  # about 3 minutes
    .venv/bin/python benchmarks/run.py --scenarios a,e --gateway-cmd '{python} app.py'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from types import FrameType
from typing import Any

import orjson
import report
from loadgen import (
    Load,
    Recorder,
    RequestFailed,
    Window,
    fetch,
    http_request,
    run_load,
    window_for,
)
from procs import Children, RssTrace, Sampler, Watch, can_pin, free_port, status_kb

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODEL = "fake-model"
API_KEY = "sk-bench-1234"
SYSTEM = "You are a helpful assistant."
USER = (
    "Summarise in two sentences why a reverse proxy in front of a language model server should "
    "stream tokens as they arrive instead of buffering them, and name one metric to watch."
)
SCENARIOS = ("a", "b", "c", "d", "e", "e1000")
OPT_IN = ("sweep", "soak")  # run only when named, or with `all`
START_LIMIT = 30.0  # seconds for a process to answer its health check
READY_LIMIT = 10.0
WARMUP_REQUESTS = 10
GATEWAY_CAPACITY = 1024  # the default MAX_IN_FLIGHT and UPSTREAM_MAX_CONNECTIONS (settings.py)
PROBE_ROOM = 24  # requests beside the streams: health checks, control calls
OPEN_FILES = 65536  # the open-files limit asked for (within the hard limit)
SPARE_FILES = 256  # descriptors beyond two per stream: logs, pipes, control calls

# Defaults, then what --quick changes; any flag given wins over both.
DEFAULTS: dict[str, Any] = {
    "warmup": 1.0,
    "duration": 5.0,
    "e_warmup": 2.0,
    "e_duration": 6.0,
    "streams": 256,
    "many_streams": 1000,
    "drain": 30.0,
    "request_timeout": 30.0,
    "e1000_timeout": 120.0,
    "media_timeout": 900.0,
    "sweep_streams": [64, 256, 512, 1000, 2000],
    "sweep_warmup": 2.0,
    "sweep_duration": 6.0,
    "held_delay_ms": 1000.0,
    "held_warmup": 2.0,
    "held_duration": 3.0,
    "soak_seconds": 60.0,
    "soak_interval": 1.0,
}
QUICK: dict[str, Any] = {
    "warmup": 0.25,
    "duration": 0.75,
    "e_warmup": 0.5,
    "e_duration": 1.0,
    "streams": 16,
    "many_streams": 16,
    "drain": 10.0,
    "request_timeout": 10.0,
    "e1000_timeout": 20.0,
    "media_timeout": 300.0,
    "sweep_streams": [4, 16],
    "sweep_warmup": 0.25,
    "sweep_duration": 1.0,
    "held_delay_ms": 200.0,
    "held_warmup": 0.2,
    "held_duration": 0.4,
    "soak_seconds": 2.0,
    "soak_interval": 0.25,
}
MEDIA: dict[str, tuple[str, list[str], list[str]]] = {  # script, full args, --quick args
    "images": ("benchmarks/bench_images.py", [], ["--repeats", "3", "--rounds", "1"]),
    "audio": ("benchmarks/bench_audio.py", [], ["--repeat", "1"]),
}


@dataclass(frozen=True)
class Scenario:
    """One load, run on both paths."""

    key: str
    title: str
    connections: int
    stream: bool
    tokens: int
    delay_ms: float
    warmup: float
    duration: float
    timeout: float
    drain: float

    @property
    def ideal_tokens_per_s(self) -> float | None:
        """With a token delay each stream can bring at most one token per tick."""
        return self.connections * 1000 / self.delay_ms if self.stream and self.delay_ms else None


def build_scenarios(args: argparse.Namespace) -> list[Scenario]:
    fast = {"warmup": args.warmup, "duration": args.duration, "delay_ms": 0.0}
    fast |= {"timeout": args.request_timeout, "drain": args.drain}
    answers = {"stream": False, "tokens": args.answer_tokens, **fast}
    streams = {"stream": True, "tokens": args.tokens, **fast}
    slow = {"stream": True, "tokens": args.stream_tokens, "delay_ms": args.delay_ms}
    slow |= {"warmup": args.e_warmup, "duration": args.e_duration}
    conc, many, each = args.conc, args.many_streams, f"{args.stream_tokens} tokens"
    each += f" at {args.delay_ms:g} ms/token"
    return [
        Scenario("a", "non-streaming, 1 connection", 1, **answers),
        Scenario("b", f"non-streaming, {conc} connections", conc, **answers),
        Scenario("c", f"streaming {args.tokens} tokens, 1 connection", 1, **streams),
        Scenario("d", f"streaming {args.tokens} tokens, {conc} connections", conc, **streams),
        Scenario(
            "e",
            f"{args.streams} streams x {each}",
            args.streams,
            timeout=args.request_timeout,
            drain=args.drain,
            **slow,
        ),
        Scenario(
            "e1000",
            f"{many} streams x {each}, every one complete",
            many,
            timeout=args.e1000_timeout,
            drain=args.e1000_timeout,
            **slow,
        ),
    ]


def sweep_scenario(args: argparse.Namespace, streams: int) -> Scenario:
    """N streams of e's shape (tokens, delay), sweep windows, e1000's patience."""
    return Scenario(
        f"sweep{streams}",
        f"{streams} streams x {args.stream_tokens} tokens at {args.delay_ms:g} ms/token",
        streams,
        stream=True,
        tokens=args.stream_tokens,
        delay_ms=args.delay_ms,
        warmup=args.sweep_warmup,
        duration=args.sweep_duration,
        timeout=args.e1000_timeout,
        drain=args.e1000_timeout,
    )


def held_scenario(args: argparse.Namespace, streams: int) -> Scenario:
    """N slow streams, each longer than the warm-up and the window together."""
    return Scenario(
        f"held{streams}",
        f"{streams} streams held open, {args.held_tokens} tokens at {args.held_delay_ms:g} ms",
        streams,
        stream=True,
        tokens=args.held_tokens,
        delay_ms=args.held_delay_ms,
        warmup=args.held_warmup,
        duration=args.held_duration,
        timeout=args.e1000_timeout,
        drain=args.e1000_timeout,
    )


def soak_scenario(args: argparse.Namespace) -> Scenario:
    """e's load, for --soak-seconds."""
    return Scenario(
        "soak",
        f"{args.streams} streams x {args.stream_tokens} tokens at {args.delay_ms:g} ms/token "
        f"for {args.soak_seconds:g} s",
        args.streams,
        stream=True,
        tokens=args.stream_tokens,
        delay_ms=args.delay_ms,
        warmup=args.e_warmup,
        duration=args.soak_seconds,
        timeout=args.request_timeout,
        drain=args.drain,
    )


def chat_request(port: int, stream: bool, tokens: int) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "temperature": 0,
        "max_tokens": tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    return http_request(
        "POST", "/v1/chat/completions", f"{HOST}:{port}", orjson.dumps(body), headers
    )


async def call(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """A control call: (status, decoded JSON body or None)."""
    data = b"" if body is None else orjson.dumps(body)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    request = http_request(method, path, f"{HOST}:{port}", data, headers)
    status, answer = await fetch(HOST, port, request)
    try:
        return status, orjson.loads(answer) if answer else None
    except orjson.JSONDecodeError:
        return status, None


async def wait_until_up(port: int, path: str, proc: subprocess.Popen[bytes], limit: float) -> None:
    """Poll `path` until it answers 200; RuntimeError if the process exits or time runs out."""
    deadline = perf_counter() + limit
    while perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before answering")
        with contextlib.suppress(OSError, RequestFailed):  # not listening yet
            if (await call(port, "GET", path))[0] == 200:
                return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{path} did not answer 200 within {limit:g} s")


class Bench:
    """The run's processes and where they listen."""

    def __init__(self, args: argparse.Namespace, children: Children, stamp: str) -> None:
        self.args = args
        self.children = children
        self.pinned = children.pinned
        self.stamp = stamp
        self.backend_port = free_port()
        self.gateway_port = free_port()
        self.backend: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.first_gateway: dict[str, Any] | None = None  # what the first start measured

    def log(self, name: str) -> Path:
        return Path(self.args.out) / f"run-{self.stamp}-{name}.log"

    async def start_backend(self) -> None:
        argv = [sys.executable, str(ROOT / "benchmarks" / "fake_backend.py")]
        argv += ["--port", str(self.backend_port), "--model", MODEL]
        self.backend = self.children.start(
            "backend", argv, self.log("backend"), cpu=self.args.client_cpu
        )
        await self._wait("backend", self.backend_port, "/health", self.backend)

    async def start_gateway(self, label: str = "gateway", streams: int = 0) -> dict[str, Any]:
        """Start it (stopping the one before, if any, for a fresh process on a new port), time its
        start-up, warm it up and read its idle RSS. `label` names its log; `streams` is the
        largest number of streams it must accept."""
        if self.gateway is not None:
            self.children.stop("gateway")
            self.gateway_port = free_port()
        values = {"{python}": sys.executable, "{port}": str(self.gateway_port)}
        values |= {"{backend_port}": str(self.backend_port), "{model}": MODEL}
        values["{backend_url}"] = f"http://{HOST}:{self.backend_port}"
        command = self.args.gateway_cmd
        for placeholder, value in values.items():
            command = command.replace(placeholder, value)
        env = os.environ | {
            "PORT": str(self.gateway_port),
            "HOST": HOST,
            "SGLANG_URL": values["{backend_url}"],
            "MODEL_NAME": MODEL,
            "API_KEYS": API_KEY,
            "LOG_LEVEL": "info",
            "RESPONSES_STORE_PATH": ":memory:",  # chat is measured; nothing written to disk
        }
        if streams + PROBE_ROOM > GATEWAY_CAPACITY:
            capacity = str(streams + 64)
            env |= {"MAX_IN_FLIGHT": capacity, "UPSTREAM_MAX_CONNECTIONS": capacity}
        started = perf_counter()
        self.gateway = self.children.start(
            "gateway", shlex.split(command), self.log(label), self.args.proxy_cpu, env, ROOT
        )
        await self._wait("gateway", self.gateway_port, "/health", self.gateway)
        startup = perf_counter() - started
        await self._wait_ready()
        await call(self.backend_port, "POST", "/fake/config", {"delay_ms": 0})  # quick warm-up
        for stream in [False] * WARMUP_REQUESTS + [True] * 3:
            request = chat_request(self.gateway_port, stream, 8)
            status, body = await fetch(HOST, self.gateway_port, request)
            if status != 200:  # say so now rather than as errors in every scenario
                raise RuntimeError(f"gateway warm-up request: HTTP {status}: {body[:500]!r}")
        await asyncio.sleep(0.5)
        started_gateway = {
            "command": command,
            "pid": self.gateway.pid,
            "startup_s": startup,
            "idle_rss_mb": _mb(status_kb(self.gateway.pid, "VmRSS")),
        }
        if self.first_gateway is None:
            self.first_gateway = started_gateway
        return started_gateway

    async def _wait(self, name: str, port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
        try:
            await wait_until_up(port, path, proc, START_LIMIT)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}\n{self.children.log_tail(name)}") from None

    async def _wait_ready(self) -> None:
        """Until the gateway has seen the backend ready (a gateway without the route: go on)."""
        deadline = perf_counter() + READY_LIMIT
        while perf_counter() < deadline:
            with contextlib.suppress(OSError, RequestFailed):
                if (await call(self.gateway_port, "GET", "/health/ready"))[0] in (200, 404):
                    return
            await asyncio.sleep(0.05)

    async def measure(
        self, scenario: Scenario, path: str, samplers: Sequence[Sampler] = ()
    ) -> dict[str, Any]:
        """Run `scenario` on `path` ("direct" or "gateway"); its figures. `samplers` watch the
        same window besides the CPU and RSS watches."""
        assert self.backend is not None
        config = {"delay_ms": scenario.delay_ms, "tokens": scenario.tokens}
        await call(self.backend_port, "POST", "/fake/config", config)
        before = (await call(self.backend_port, "GET", "/fake/stats"))[1]
        port = self.gateway_port if path == "gateway" else self.backend_port
        load = Load(
            connections=scenario.connections,
            request=chat_request(port, scenario.stream, scenario.tokens),
            expected_tokens=scenario.tokens if scenario.stream else None,
            warmup=scenario.warmup,
            duration=scenario.duration,
            timeout=scenario.timeout,
            drain=scenario.drain,
        )
        processes = {"backend": Watch.process(self.backend.pid)}
        processes["client"] = Watch.process(os.getpid())
        if path == "gateway":
            assert self.gateway is not None
            processes["gateway"] = Watch.process(self.gateway.pid, tree=True)
        cores = {}
        if self.pinned:  # anything else on these cores shows as busy time beyond our processes
            cores = {"client": Watch.core(self.args.client_cpu)}
            cores["gateway"] = Watch.core(self.args.proxy_cpu)
        watches = [*processes.values(), *cores.values(), *samplers]
        recorder = await _watched(port, load, watches)
        after = (await call(self.backend_port, "GET", "/fake/stats"))[1]
        figures = recorder.summary(2 * scenario.delay_ms / 1000 if scenario.delay_ms else None)
        figures["upstream_chat_requests"] = after["chat_completions"] - before["chat_completions"]
        ideal = scenario.ideal_tokens_per_s
        if ideal:
            figures["ideal_tokens_per_s"] = ideal
            figures["tokens_pct_of_ideal"] = 100 * figures["tokens_per_s"] / ideal
        figures |= {f"{name}_cpu_pct": watch.cpu_pct for name, watch in processes.items()}
        figures |= {f"{name}_core_busy_pct": watch.cpu_pct for name, watch in cores.items()}
        return figures | _gateway_usage(processes.get("gateway"), recorder)


async def _watched(port: int, load: Load, watches: Sequence[Sampler]) -> Recorder:
    """run_load while each watch samples over the same window."""
    window = window_for(load)
    tasks = [asyncio.create_task(watch.run(window)) for watch in watches]
    try:
        recorder = await run_load(HOST, port, load, window)
        # The load may end right at the window's end: give each watch the moment it needs.
        events = [asyncio.create_task(watch.measured.wait()) for watch in watches]
        await asyncio.wait(events, timeout=1.0)
        for event in events:
            event.cancel()
        return recorder
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _gateway_usage(gateway: Watch | None, recorder: Recorder) -> dict[str, Any]:
    if gateway is None or gateway.cpu_s is None:
        return {}
    cpu_ms = gateway.cpu_s * 1000
    figures = {
        "gateway_cpu_s": gateway.cpu_s,
        "gateway_cpu_ms_per_request": cpu_ms / recorder.completed if recorder.completed else None,
        "gateway_peak_rss_mb": _mb(gateway.peak_rss_kb),
        "gateway_rss_end_mb": _mb(gateway.end_rss_kb),
    }
    if recorder.expected_tokens is not None:
        figures["gateway_cpu_ms_per_1k_tokens"] = (
            cpu_ms * 1000 / recorder.tokens if recorder.tokens else None
        )
    return figures


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


@dataclass
class OpenStreams:
    """How many streams the backend has open halfway through the window (`/fake/stats`)."""

    port: int
    count: int | None = None
    measured: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, window: Window) -> None:
        await asyncio.sleep(max(window.start + window.seconds / 2 - perf_counter(), 0.0))
        with contextlib.suppress(OSError, RequestFailed, TimeoutError):
            status, stats = await call(self.port, "GET", "/fake/stats")
            if status == 200 and isinstance(stats, dict):
                ended = stats["streams_completed"] + stats["streams_aborted"]
                self.count = stats["streams_started"] - ended
        self.measured.set()


def per_stream(figures: dict[str, Any], idle_mb: float | None, streams: int) -> dict[str, Any]:
    """The gateway's RSS at the window's end above its idle RSS, per open stream, in kB."""
    end = figures.get("gateway_rss_end_mb")
    kb = None if end is None or idle_mb is None else (end - idle_mb) * 1024 / streams
    return {"idle_rss_mb": idle_mb, "rss_per_stream_kb": kb}


# -- the run ----------------------------------------------------------------------------------


async def run_all(bench: Bench, selected: list[str]) -> dict[str, Any]:
    """Start the backend, then the selected scenarios: a to e1000 on one gateway, then the
    sweep and the soak on fresh ones."""
    result: dict[str, Any] = {}
    await bench.start_backend()
    if set(selected) & set(SCENARIOS):
        result |= await run_scenarios(bench, selected)
    if "sweep" in selected:
        result["sweep"] = await run_sweep(bench)
    if "soak" in selected:
        result["soak"] = await run_soak(bench)
    result.setdefault("gateway", bench.first_gateway)
    return result


async def run_scenarios(bench: Bench, selected: list[str]) -> dict[str, Any]:
    """Start the gateway, measure each selected scenario of a to e1000 on both paths."""
    result: dict[str, Any] = {"scenarios": {}}
    result["gateway"] = await bench.start_gateway()
    assert bench.gateway is not None
    _progress(
        f"gateway up in {result['gateway']['startup_s']:.2f} s, "
        f"idle RSS {report.number(result['gateway']['idle_rss_mb'])} MB"
    )
    for scenario in build_scenarios(bench.args):
        if scenario.key not in selected:
            continue
        entry: dict[str, Any] = {"title": scenario.title, "params": asdict(scenario)}
        for path in ("direct", "gateway"):
            _progress(f"{scenario.key} {path}: {scenario.title}")
            entry[path] = await bench.measure(scenario, path)
        result["scenarios"][scenario.key] = entry
    await asyncio.sleep(1.0)  # let in-flight work and buffers settle before reading memory
    idle = result["gateway"]["idle_rss_mb"]
    after = _mb(status_kb(bench.gateway.pid, "VmRSS"))
    result["memory"] = {
        "idle_rss_mb": idle,
        "rss_after_mb": after,
        "growth_mb": None if idle is None or after is None else after - idle,
        "hwm_mb": _mb(status_kb(bench.gateway.pid, "VmHWM")),
    }
    return result


async def run_sweep(bench: Bench) -> dict[str, Any]:
    """For each N, on a fresh gateway: N streams held open, then N streams of e's load."""
    args, points = bench.args, []
    for streams in args.sweep_streams:
        gateway = await bench.start_gateway(f"gateway-sweep-{streams}", streams)
        held, load = held_scenario(args, streams), sweep_scenario(args, streams)
        _progress(f"sweep {streams}: {held.title}")
        probe = OpenStreams(bench.backend_port)
        held_figures = await bench.measure(held, "gateway", [probe])
        held_figures["held_open_at_backend"] = probe.count
        _progress(f"sweep {streams}: {load.title}")
        load_figures = await bench.measure(load, "gateway")
        idle = gateway["idle_rss_mb"]
        points.append(
            {
                "streams": streams,
                "gateway": gateway,
                "held": held_figures | per_stream(held_figures, idle, streams),
                "load": load_figures | per_stream(load_figures, idle, streams),
            }
        )
    params = {"held": _params(held_scenario(args, 0)), "load": _params(sweep_scenario(args, 0))}
    return {"streams": args.sweep_streams, "params": params, "points": points}


async def run_soak(bench: Bench) -> dict[str, Any]:
    """e's load on a fresh gateway for --soak-seconds, its RSS sampled all along."""
    args, scenario = bench.args, soak_scenario(bench.args)
    gateway = await bench.start_gateway("gateway-soak", scenario.connections)
    assert bench.gateway is not None
    _progress(f"soak: {scenario.title}")
    trace = RssTrace(bench.gateway.pid, args.soak_interval)
    figures = await bench.measure(scenario, "gateway", [trace])
    params = _params(scenario) | {"interval": args.soak_interval}
    return {
        "title": scenario.title,
        "params": params,
        "gateway": gateway,
        "figures": figures | trace.summary(),
    }


def _params(scenario: Scenario) -> dict[str, Any]:
    """A scenario's parameters without its per-N key, title and connection count."""
    return {
        key: value
        for key, value in asdict(scenario).items()
        if key not in ("key", "title", "connections")
    }


def run_media(args: argparse.Namespace, children: Children, stamp: str) -> dict[str, Any]:
    """The image and audio benchmarks, one after the other on the gateway's core."""
    media: dict[str, Any] = {}
    for name, (script, full, quick) in MEDIA.items():
        _progress(f"media: {script}")
        log = Path(args.out) / f"run-{stamp}-media-{name}.log"
        argv = [sys.executable, str(ROOT / script), *(quick if args.quick else full)]
        started = perf_counter()
        children.start(name, argv, log, cpu=args.proxy_cpu, cwd=ROOT)
        returncode = children.wait(name, args.media_timeout)
        output = log.read_text(errors="replace")
        media[name] = {
            "command": shlex.join(argv),
            "returncode": "timeout" if returncode is None else returncode,
            "seconds": perf_counter() - started,
            "headline": report.media_headline(name, output),
            "output": output,
        }
    return media


def meta(args: argparse.Namespace, stamp: str, pinned: bool) -> dict[str, Any]:
    pinning = (
        {"gateway_and_media": args.proxy_cpu, "client_and_backend": args.client_cpu}
        if pinned
        else None
    )
    return {
        "started_utc": stamp,
        "argv": args.argv,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "pinning": pinning,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": _git(),
        "model": MODEL,
        "prompt_chars": len(SYSTEM) + len(USER),
    }


def _git() -> dict[str, Any] | None:
    commit, status = _git_output("rev-parse", "HEAD"), _git_output("status", "--porcelain")
    return None if commit is None else {"commit": commit, "dirty": bool(status)}


def _git_output(*args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments
            [git, *args], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def save(result: dict[str, Any], text: str, out: Path, stamp: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, text_path = out / f"run-{stamp}.json", out / f"run-{stamp}.txt"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    text_path.write_text(text)
    return json_path, text_path


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without --quick, the defaults are the ones in the module docstring.",
    )
    add = parser.add_argument
    every = ",".join([*SCENARIOS, "media", *OPT_IN])
    add(
        "--scenarios",
        default=",".join([*SCENARIOS, "media"]),
        help=f"comma list of {every}, or all (default: all but sweep and soak, which add "
        "about 3 minutes)",
    )
    add("--skip-media", action="store_true", help="leave out the media benchmarks")
    add("--quick", action="store_true", help="tiny windows, 16 streams: a smoke test")
    add("--warmup", type=float, help="seconds before the window, a-d (1; quick 0.25)")
    add("--duration", type=float, help="measured seconds, a-d (5; quick 0.75)")
    add("--e-warmup", type=float, help="seconds before the window, e, e1000, soak (2; quick 0.5)")
    add("--e-duration", type=float, help="measured seconds, e and e1000 (6; quick 1)")
    add("--conc", type=int, default=64, help="connections in b and d")
    add("--answer-tokens", type=int, default=16, help="tokens per non-streaming answer (a, b)")
    add("--tokens", type=int, default=64, help="tokens per stream in c and d")
    add("--streams", type=int, help="concurrent streams in e and soak (256; quick 16)")
    add("--many-streams", type=int, help="concurrent streams in e1000 (1000; quick 16)")
    add("--stream-tokens", type=int, default=50, help="tokens per stream in e, e1000, sweep, soak")
    add("--delay-ms", type=float, default=20.0, help="token spacing in e, e1000, sweep, soak")
    add("--drain", type=float, help="seconds answers in flight may finish after a window (30)")
    add("--request-timeout", type=float, help="seconds per request, a-e and soak (30)")
    add("--e1000-timeout", type=float, help="seconds per stream, drain cap: e1000, sweep (120)")
    add("--media-timeout", type=float, help="seconds per media benchmark (900)")
    add(
        "--sweep-streams",
        type=_stream_counts,
        help="comma list of concurrent streams in sweep (64,256,512,1000,2000; quick 4,16)",
    )
    add("--sweep-warmup", type=float, help="seconds before each sweep window (2; quick 0.25)")
    add("--sweep-duration", type=float, help="measured seconds per sweep point (6; quick 1)")
    add("--held-tokens", type=int, default=6, help="tokens per held stream in sweep")
    add("--held-delay-ms", type=float, help="token spacing of held streams (1000; quick 200)")
    add("--held-warmup", type=float, help="seconds before the held window (2; quick 0.2)")
    add("--held-duration", type=float, help="measured seconds, held streams (3; quick 0.4)")
    add("--soak-seconds", type=float, help="measured seconds of the soak (60; quick 2)")
    add("--soak-interval", type=float, help="seconds between RSS samples (1; quick 0.25)")
    placeholders = "{python} {port} {backend_port} {backend_url} {model}"
    add("--gateway-cmd", default="{python} app.py", help=f"placeholders: {placeholders}")
    add("--proxy-cpu", type=int, default=1, help="core for the gateway and the media benchmarks")
    add("--client-cpu", type=int, default=0, help="core for the load generator and the backend")
    add("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for results, logs")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(_selected(args)) - {*SCENARIOS, "media", *OPT_IN}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    held_s = (args.held_tokens - 1) * args.held_delay_ms / 1000
    if args.held_warmup + args.held_duration > held_s:
        parser.error(
            "held streams must outlast the held window: --held-warmup + --held-duration must be "
            f"at most (--held-tokens - 1) x --held-delay-ms = {held_s:g} s"
        )
    if args.soak_seconds <= 0 or args.soak_interval <= 0:
        parser.error("--soak-seconds and --soak-interval must be positive")
    available = os.sched_getaffinity(0)
    if len(available) >= 2 and not {args.proxy_cpu, args.client_cpu} <= available:
        parser.error(f"--proxy-cpu and --client-cpu must be among {sorted(available)}")
    return args


def _stream_counts(text: str) -> list[int]:
    """`--sweep-streams`: a comma list of positive integers."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 64,256: {text!r}")
    return counts


def _selected(args: argparse.Namespace) -> list[str]:
    chosen = [key.strip() for key in args.scenarios.split(",") if key.strip()]
    if "all" in chosen:
        chosen = [*SCENARIOS, "media", *OPT_IN]
    return [key for key in chosen if not (key == "media" and args.skip_media)]


def most_streams(args: argparse.Namespace, selected: list[str]) -> int:
    """The most streams open at once in the selected scenarios."""
    counts = {"b": args.conc, "d": args.conc, "e": args.streams, "e1000": args.many_streams}
    counts |= {"soak": args.streams, "sweep": max(args.sweep_streams)}
    return max((counts.get(key, 1) for key in selected), default=1)


def raise_open_files_limit(streams: int) -> dict[str, Any]:
    """The gateway holds two sockets per stream (client and upstream), this process one, and
    the children inherit this process's limit: raise it within the hard limit."""
    needed = 2 * streams + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(OPEN_FILES, needed)
    if hard != resource.RLIM_INFINITY:
        wanted = min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits: dict[str, Any] = {"soft": soft, "hard": hard, "needed": needed, "warning": None}
    if soft != resource.RLIM_INFINITY and soft < needed:
        limits["warning"] = (
            f"the open-files limit is {soft} (hard limit {hard}), below the {needed} that "
            f"{streams} streams need in the gateway: expect refused connections; raise the hard "
            "limit (ulimit -Hn, or LimitNOFILE) and run again"
        )
    return limits


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops every child


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = _selected(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    open_files = raise_open_files_limit(most_streams(args, selected))
    if open_files["warning"]:
        print(f"warning: {open_files['warning']}", file=sys.stderr)
    pinned = can_pin()
    if pinned:
        os.sched_setaffinity(0, {args.client_cpu})
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    children = Children(pinned)
    result: dict[str, Any] = {"meta": meta(args, stamp, pinned) | {"open_files": open_files}}
    run = uvloop.run if uvloop is not None else asyncio.run
    try:
        if set(selected) & {*SCENARIOS, *OPT_IN}:
            bench = Bench(args, children, stamp)
            result |= run(run_all(bench, selected))
            children.stop_all()
        if "media" in selected:
            result["media"] = run_media(args, children, stamp)
    except KeyboardInterrupt:
        print("interrupted: stopping every process the run started", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # a process that would not start, a refused warm-up request
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
    result["goals"] = report.goals(result)
    text = report.render(result)
    json_path, text_path = save(result, text, Path(args.out), stamp)
    print(text)
    print(f"saved {json_path} and {text_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
