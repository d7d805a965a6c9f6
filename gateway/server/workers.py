"""Several gateway processes on one port, for hosts with more than one core (`WORKERS`).

One gateway process uses one core (issue 7 measures it pinned to one). With `WORKERS=N` the
process started as `python app.py` becomes a small supervisor: it starts N copies of itself, each
a complete gateway with its own event loop, upstream pool, drain on SIGTERM and limits, each
listening on the same port with `SO_REUSEPORT`, so that the kernel spreads new connections
across them. The supervisor forwards SIGTERM/SIGINT to every worker, waits for them to drain,
and exits; if a worker dies, it stops the others and exits non-zero, for the container's restart
policy to act (a half-alive gateway would hide the failure).

Prometheus metrics are the whole gateway's whichever worker a scrape reaches: the workers share
a fresh folder for prometheus_client's multiprocess mode (`metrics.py`), made here on start and
removed on exit. What stays per process: the per-key rate limit and `MAX_IN_FLIGHT` (each worker
applies its own), the image and transcription caches.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

from gateway.server.metrics import MULTIPROCESS_DIR
from gateway.settings import Settings

logger = logging.getLogger("gateway.workers")

WORKER_ENV = "GATEWAY_WORKER"  # set in each worker's environment: serve, don't supervise
_POLL_SECONDS = 0.2


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def shared_socket(settings: Settings) -> socket.socket:
    """This worker's listening socket, bound with SO_REUSEPORT beside its siblings'."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    return sock


def supervise(settings: Settings, script: str, *, drain_seconds: float) -> int:
    """Run `settings.workers` copies of `script` as workers until a signal or a failure."""
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        return _supervise(settings, script, drain_seconds, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings, script: str, drain_seconds: float, metrics_dir: str) -> int:
    environment = {**os.environ, WORKER_ENV: "1", MULTIPROCESS_DIR: metrics_dir}
    workers = [
        subprocess.Popen(  # noqa: S603 - this interpreter, our own script
            [sys.executable, script], env=environment, stdin=subprocess.DEVNULL
        )
        for _ in range(settings.workers)
    ]
    logger.info(
        "started %d workers on %s:%d: %s",
        len(workers),
        settings.host,
        settings.port,
        " ".join(str(worker.pid) for worker in workers),
    )
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        failed = next((worker for worker in workers if worker.poll() is not None), None)
        if failed is not None:
            logger.error(
                "worker %d exited with %s; stopping the others", failed.pid, failed.returncode
            )
            forward(signal.SIGTERM, None)
            _wait(workers, drain_seconds)
            return 1
        time.sleep(_POLL_SECONDS)
    _wait(workers, drain_seconds)
    return 0


def _wait(workers: list[subprocess.Popen[bytes]], seconds: float) -> None:
    """Wait for the workers to finish draining; kill any still running after `seconds`."""
    deadline = time.monotonic() + seconds
    for worker in workers:
        try:
            worker.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            logger.error("worker %d did not stop in time; killing it", worker.pid)
            worker.kill()
            worker.wait()
