"""`WORKERS=2`: two gateway processes share the port, and the supervisor stops them together."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from conftest import MODEL
from fake_sglang import FakeSGLang
from test_load import gateway_process

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def test_two_workers_share_the_port_and_stop_together(fake_server: FakeSGLang) -> None:
    with gateway_process(fake_server, WORKERS="2") as gateway:
        workers = _children(gateway.process.pid)
        assert len(workers) == 2
        before = {worker: _cpu_ticks(worker) for worker in workers}
        for _ in range(200):  # a new connection each time: the kernel spreads them
            with httpx.Client(base_url=gateway.url, timeout=10) as http:
                answer = http.post(CHAT, json={"model": MODEL, "messages": HELLO})
                assert answer.status_code == 200, answer.text
        assert all(_cpu_ticks(worker) > before[worker] for worker in workers)
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=20) == 0
    for worker in workers:
        assert not Path(f"/proc/{worker}").exists() or _is_zombie(worker)


def test_a_dead_worker_stops_the_gateway(fake_server: FakeSGLang) -> None:
    with gateway_process(fake_server, WORKERS="2") as gateway:
        first, second = _children(gateway.process.pid)
        os.kill(first, signal.SIGKILL)
        assert gateway.process.wait(timeout=20) == 1
        assert not Path(f"/proc/{second}").exists() or _is_zombie(second)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
