"""What the gateway knows of SGLang's health, kept fresh by one background task.

SGLang's `/health` runs a real one-token generation (a second or more), so it is never called per
request or per probe. A background task polls SGLang's cheap `/ready` flag every
`HEALTH_POLL_INTERVAL` seconds (older builds without `/ready` are asked `/v1/models`, which
answers once the server is up) and keeps the result; the gateway's `/health` reports it at once.
A readiness probe that finds SGLang not ready checks again on the spot, so recovery is seen
without waiting for the next poll. Each time SGLang becomes ready, its `/model_info` is read once
for what the model can take (`has_image_understanding`, `has_audio_understanding`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio
import orjson

from gateway.settings import Settings
from gateway.sglang.upstream import TransportError, UpstreamClient

logger = logging.getLogger("gateway.health")


@dataclass(frozen=True)
class BackendState:
    """The last answer from SGLang: reachable at all, and ready to generate."""

    reachable: bool
    ready: bool
    detail: str
    checked_at: float | None  # time.time() of the check; None before the first one

    def as_json(self) -> dict[str, object]:
        return {
            "reachable": self.reachable,
            "ready": self.ready,
            "detail": self.detail,
            "checked_at": self.checked_at,
        }


@dataclass(frozen=True)
class Capabilities:
    """What the served model understands, from SGLang's `/model_info`; None = not known yet."""

    images: bool | None = None
    audio: bool | None = None


UNKNOWN = BackendState(reachable=False, ready=False, detail="not checked yet", checked_at=None)


class BackendMonitor:
    """Polls SGLang's readiness in the background and answers from the last result."""

    def __init__(self, settings: Settings, client: UpstreamClient) -> None:
        self._settings = settings
        self._client = client
        self._ready_path = "/ready"
        self.state = UNKNOWN
        self.capabilities = Capabilities()

    async def run(self) -> None:
        """Poll until cancelled (by the app's lifespan)."""
        while True:
            await self.check()
            await anyio.sleep(self._settings.health_poll_interval)

    async def check(self) -> BackendState:
        """Ask SGLang now, remember and return the answer."""
        previous = self.state
        self.state = await self._probe()
        if self.state.ready and not previous.ready:
            self.capabilities = await self._model_capabilities()
        if previous.ready != self.state.ready:
            logger.info(
                "model server %s: %s",
                "ready" if self.state.ready else "not ready",
                self.state.detail,
            )
        return self.state

    async def _probe(self) -> BackendState:
        now = time.time()
        try:
            with anyio.fail_after(self._settings.health_check_timeout):
                status, _ = await self._client.get(self._ready_path)
                if status == 404 and self._ready_path == "/ready":
                    # An SGLang build older than /ready: /v1/models answers once it serves.
                    self._ready_path = "/v1/models"
                    status, _ = await self._client.get(self._ready_path)
        except TimeoutError:
            return BackendState(True, False, "readiness check timed out", now)
        except TransportError:
            return BackendState(False, False, "not reachable", now)
        if status == 200:
            return BackendState(True, True, "ready", now)
        if status == 503:
            return BackendState(True, False, "starting, paused or shutting down", now)
        return BackendState(True, False, f"readiness check answered HTTP {status}", now)

    async def _model_capabilities(self) -> Capabilities:
        for path in ("/model_info", "/get_model_info"):  # the older name first served alone
            try:
                with anyio.fail_after(self._settings.health_check_timeout):
                    status, body = await self._client.get(path)
                info = orjson.loads(body) if status == 200 else None
            except (TimeoutError, TransportError, orjson.JSONDecodeError):
                continue
            if isinstance(info, dict):
                images = info.get("has_image_understanding")
                audio = info.get("has_audio_understanding")
                return Capabilities(
                    images if isinstance(images, bool) else None,
                    audio if isinstance(audio, bool) else None,
                )
        return Capabilities()
