"""The processes a benchmark run starts, and what /proc says about them.

Owns starting children (pinned to a core with `taskset` when there are at least two, each in its
own session so that its own children go with it), stopping every one of them (SIGTERM, then
SIGKILL) however the run ends, and reading CPU time and memory from /proc: CPU is utime + stime of
a process and, for the gateway, of its whole process tree (worker processes included); a core's
busy time (from /proc/stat) shows whether anything else was using it. `Watch` takes a window's
CPU time, peak RSS and RSS at the window's end; `RssTrace` samples RSS at a fixed interval over a
long window (the soak) and summarises it (start, quarters, end, max, growth over the second half).

Used by `benchmarks/run.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

from loadgen import Window

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
SAMPLE_EVERY = 0.1  # seconds between RSS samples
QUARTERS = (("start", 0.0), ("25pct", 0.25), ("50pct", 0.5), ("75pct", 0.75), ("end", 1.0))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free when asked: fine on a benchmark box)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def can_pin() -> bool:
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


class Children:
    """Every process the run started, by name; `stop_all()` ends whichever are still alive."""

    def __init__(self, pin: bool) -> None:
        self.pinned = pin
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}

    def start(
        self,
        name: str,
        argv: list[str],
        log: Path,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` with stdout and stderr to `log`, on core `cpu` when pinning is on."""
        if self.pinned and cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the pid stays the same
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own command lines
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )
        self._procs[name] = proc
        self._logs[name] = log
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self._logs.get(name)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait(self, name: str, seconds: float) -> int | None:
        """The exit status, or None if it ran out of time (it is then stopped)."""
        try:
            return self._procs[name].wait(seconds)
        except subprocess.TimeoutExpired:
            self.stop(name)
            return None

    def stop(self, name: str) -> None:
        """SIGTERM to the child's process group, SIGKILL after STOP_GRACE seconds."""
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(STOP_GRACE)
        _signal_group(proc, signal.SIGKILL)  # anything it left behind in its group

    def stop_all(self) -> None:
        for name in list(self._procs):
            self.stop(name)


def _signal_group(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


# -- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                parents.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def cpu_seconds(pid: int, tree: bool = False) -> float | None:
    """utime + stime (+ reaped children's) of `pid`, and of its descendants with `tree`."""
    total = 0
    for each in [pid, *(_descendants(pid) if tree else [])]:
        try:
            fields = _stat_fields(each)
        except OSError:
            if each == pid:
                return None
            continue  # a child that just exited
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/<pid>/status, such as VmRSS or VmHWM."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def core_busy_seconds(cpu: int) -> float | None:
    """Time core `cpu` was not idle since boot, whoever used it (softirq included)."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                # user nice system idle iowait irq softirq steal (guest is counted in user)
                values = [int(value) for value in line.split()[1:9]]
                return (sum(values) - values[3] - values[4]) / CLOCK_TICKS
    except OSError:
        pass
    return None


class Sampler(Protocol):
    """Something that observes a load's window while it runs (`run` is cancelled after it)."""

    measured: asyncio.Event  # set once the window's end has been observed

    async def run(self, window: Window) -> None: ...


@dataclass
class Watch:
    """Busy time over a window (of a process, or of a core), a process's peak RSS and its RSS when
    the window ends."""

    busy: Callable[[], float | None]  # cumulative busy seconds
    pid: int | None = None  # whose RSS to sample
    cpu_s: float | None = None
    wall_s: float | None = None
    peak_rss_kb: int | None = None
    end_rss_kb: int | None = None
    measured: asyncio.Event = field(default_factory=asyncio.Event)  # the window's end was read

    @classmethod
    def process(cls, pid: int, tree: bool = False) -> Watch:
        return cls(lambda: cpu_seconds(pid, tree), pid)

    @classmethod
    def core(cls, cpu: int) -> Watch:
        return cls(lambda: core_busy_seconds(cpu))

    async def run(self, window: Window) -> None:
        """Sample until cancelled: busy time at the window's start and end, RSS every 100 ms."""
        start: tuple[float, float] | None = None
        while True:
            now = perf_counter()
            rss = None if self.pid is None else status_kb(self.pid, "VmRSS")
            if rss is not None:
                self.peak_rss_kb = max(rss, self.peak_rss_kb or 0)
            if start is None and now >= window.start:
                start = (self.busy() or 0.0, perf_counter())
            elif start is not None and self.wall_s is None and now >= window.end:
                busy = self.busy()
                self.wall_s = perf_counter() - start[1]
                self.cpu_s = None if busy is None else busy - start[0]
                self.end_rss_kb = None if self.pid is None else status_kb(self.pid, "VmRSS")
                self.measured.set()
            next_edge = window.start if start is None else window.end
            pause = SAMPLE_EVERY if self.wall_s is not None else min(SAMPLE_EVERY, next_edge - now)
            await asyncio.sleep(max(pause, 0.001))

    @property
    def cpu_pct(self) -> float | None:
        if self.cpu_s is None or not self.wall_s:
            return None
        return 100 * self.cpu_s / self.wall_s


@dataclass
class RssTrace:
    """A process's VmRSS every `every` seconds from the window's start, and once at its end."""

    pid: int
    every: float
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s into the window, kB)
    measured: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, window: Window) -> None:
        """Sample on the grid start + k * every (a late sample does not shift the next ones)."""
        tick = 0
        while True:
            at = min(window.start + tick * self.every, window.end)
            await asyncio.sleep(max(at - perf_counter(), 0.0))
            rss = status_kb(self.pid, "VmRSS")
            if rss is not None:
                self.samples.append((perf_counter() - window.start, rss))
            if at >= window.end:
                self.measured.set()
                return
            tick += 1

    def at(self, fraction: float) -> tuple[float, int] | None:
        """The sample nearest to `fraction` of the way through the samples' span."""
        if not self.samples:
            return None
        when = self.samples[0][0] + fraction * (self.samples[-1][0] - self.samples[0][0])
        return min(self.samples, key=lambda sample: abs(sample[0] - when))

    def summary(self) -> dict[str, Any]:
        """RSS (MB) at the start, each quarter, the end and its max; growth over the second half."""
        figures: dict[str, Any] = {"rss_samples": len(self.samples)}
        for label, fraction in QUARTERS:
            figures[f"rss_{label}_mb"] = _sample_mb(self.at(fraction))
        peak = max((kb for _, kb in self.samples), default=None)
        figures["rss_max_mb"] = None if peak is None else peak / 1024
        middle, end = self.at(0.5), self.at(1.0)
        growth = per_minute = None
        if middle is not None and end is not None:
            growth = (end[1] - middle[1]) / 1024
            minutes = (end[0] - middle[0]) / 60
            per_minute = growth / minutes if minutes > 0 else None
        figures["growth_second_half_mb"] = growth
        figures["growth_second_half_mb_per_min"] = per_minute
        figures["rss_trace_mb"] = [[round(t, 3), kb / 1024] for t, kb in self.samples]
        return figures


def _sample_mb(sample: tuple[float, int] | None) -> float | None:
    return None if sample is None else sample[1] / 1024
