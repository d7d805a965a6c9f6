"""`WORKERS=2`: two gateway processes share the port and their metrics, and the supervisor stops
them together."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from conftest import MODEL, eventually
from fake_sglang import FakeSGLang
from prometheus_client.parser import text_string_to_metric_families
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
        # Its helpers (image decoders, the JSON worker: MEDIA_PRESTART starts them) cannot be
        # shut down by a worker killed outright; they must notice and go on their own.
        helpers = _children(first)
        assert len(helpers) >= 2, helpers
        os.kill(first, signal.SIGKILL)
        assert gateway.process.wait(timeout=20) == 1
        assert not Path(f"/proc/{second}").exists() or _is_zombie(second)
    assert eventually(lambda: all(_is_zombie(helper) for helper in helpers), timeout=5)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _chat_requests_counted(scrape: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(scrape):
        if family.name == "gateway_requests":
            for sample in family.samples:
                if sample.name == "gateway_requests_total" and sample.labels["route"] == CHAT:
                    total += sample.value
    return total


def test_one_scrape_sees_every_workers_requests(fake_server: FakeSGLang) -> None:
    with gateway_process(fake_server, WORKERS="2") as gateway:
        workers = _children(gateway.process.pid)
        metrics_dirs = {Path(f"/proc/{w}/environ").read_bytes() for w in workers}
        assert len(metrics_dirs) == 1  # the same environment, the same metrics folder
        served = 0
        for _ in range(60):  # new connections: the kernel spreads them over both workers
            with httpx.Client(base_url=gateway.url, timeout=10) as http:
                assert http.post(CHAT, json={"model": MODEL, "messages": HELLO}).is_success
                served += 1
        scrapes = []
        for _ in range(10):  # each scrape may reach either worker: all must say the same
            with httpx.Client(base_url=gateway.url, timeout=10) as http:
                scrapes.append(_chat_requests_counted(http.get("/metrics").text))
        assert scrapes == [served] * 10
        environ = next(iter(metrics_dirs)).split(b"\0")
        folder = next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
        path = Path(folder.split(b"=", 1)[1].decode())
        assert path.is_dir() and any(path.iterdir())
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=20) == 0
    assert not path.exists()  # removed on exit
