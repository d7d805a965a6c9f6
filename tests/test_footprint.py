"""Idle footprint (issue 7): an idle gateway has loaded none of the media stack.

NumPy, PyAV, soxr, Pillow, pillow-heif, pybase64 and (optional) Whisper with PyTorch cost tens of
MB of RSS together; they are imported only when a request carries an image or audio. Checked in a
fresh interpreter, since this test process has long imported them all for the media tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("numpy", "av", "soxr", "PIL", "pillow_heif", "pybase64", "torch", "whisper")

# Imports the app, builds it, runs its lifespan's start-up and shutdown (one request in between),
# then prints which heavy modules got loaded and the process's RSS.
PROBE = """
import asyncio, json, sys

import httpx

import app
from gateway.settings import Settings

HEAVY = {heavy!r}


async def main() -> None:
    settings = Settings(
        _env_file=None, sglang_url="http://127.0.0.1:9", health_poll_interval=0.1
    )
    gateway = app.create_app(settings)
    async with gateway.router.lifespan_context(gateway):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            await client.get("/health")


asyncio.run(main())
with open("/proc/self/status") as status:
    rss = [line.split()[1] for line in status if line.startswith("VmRSS:")]
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY)
print(json.dumps({{"loaded": loaded, "rss_kib": int(rss[0]) if rss else None}}))
"""


def test_idle_gateway_loads_no_media_stack(record_property: Callable[[str, object], None]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    record_property("idle_rss_kib", result["rss_kib"])
    print(f"idle RSS after start-up and shutdown: {result['rss_kib']} KiB")
    assert result["loaded"] == [], (
        "the app imported media modules without a media request (idle memory, issue 7): "
        + ", ".join(result["loaded"])
    )
