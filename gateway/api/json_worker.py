"""Request bodies parsed where they cannot pause the event loop: `JsonParser`.

pydantic's JSON parser holds Python's GIL for the whole of a body, a worker thread or not, and
a long string is the costly part: measured on 2 cores, a 60 MB body (one string, or base64
media near MAX_BODY_BYTES) paused every other stream for 80-130 ms from a thread. So a body is
parsed by size:

- under `OFF_LOOP_BYTES` (1 MiB): on the loop, where it costs less than handing it off;
- up to `PROCESS_BYTES` (4 MiB): in a worker thread (a pause of a few ms at most);
- past that: in a worker process of its own. The body goes over as a temporary file (TMPDIR;
  `os.write` lets go of the GIL while it copies) and comes back as the validated model, pickled:
  unpickling copies only the long strings a valid request has (media, ~0.6 ms per MB), and a
  body that fails there (bad JSON, a field's type, or the caller's `check`: a 60 MB string over
  MAX_TEXT_CHARS) costs the loop nothing but the error's fields.

One process, started on the first large body or at start-up (`warm`, with MEDIA_PRESTART);
large bodies are rare and take ~2 ms per MB in it, so they queue there rather than cost cores.
A worker that dies is replaced and its body tried once more on the new one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel

from gateway.api.validation import JSON_MEDIA_TYPE, check_content_type, parse_json_body
from gateway.errors import GatewayError, InvalidRequest
from gateway.server.child_process import start_child
from gateway.tempfiles import write_temporary

logger = logging.getLogger("gateway")

ModelT = TypeVar("ModelT", bound=BaseModel)

OFF_LOOP_BYTES = 1 << 20
PROCESS_BYTES = 4 << 20


class JsonParser:
    """Validates request bodies as pydantic models, on the loop, in a thread or in a process."""

    def __init__(self, *, process_bytes: int = PROCESS_BYTES) -> None:
        self._process_bytes = process_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def parse(
        self,
        model: type[ModelT],
        body: bytes | bytearray,
        content_type: str | None,
        check: Callable[[ModelT], None] | None = None,
    ) -> ModelT:
        """`body` as `model`, or `InvalidRequest` naming the field (as `parse_json_body`).

        `check` (picklable: a module-level function or a partial of one) also runs in the
        worker process, so that a body over a limit it checks never crosses back: a 60 MB
        string refused there costs the loop nothing. The caller still runs its own checks.
        """
        if len(body) < OFF_LOOP_BYTES:
            return parse_json_body(model, body, content_type)
        if len(body) < self._process_bytes:
            return await anyio.to_thread.run_sync(parse_json_body, model, body, content_type)
        check_content_type(content_type)
        path = await anyio.to_thread.run_sync(write_temporary, body, "gateway-body-")
        try:
            kind, value = await self._run(_parse_file, model, path, check)
        finally:
            os.unlink(path)
        if kind == "invalid":
            raise InvalidRequest(value["message"], param=value["param"], code=value["code"])
        return value  # type: ignore[no-any-return]

    async def warm(self, *models: type[BaseModel]) -> None:
        """Start the worker now, with the modules of `models` imported in it."""
        await self._run(_ready, models)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def _run(self, function: Any, *args: Any) -> Any:
        for attempt in (0, 1):
            pool = self._pool = self._pool or _new_pool()
            try:
                return await asyncio.wrap_future(pool.submit(function, *args))
            except BrokenProcessPool:
                if self._pool is pool:
                    logger.error("the JSON worker process died; starting a new one")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                if attempt:
                    raise GatewayError("The request body could not be parsed.") from None
        raise AssertionError("unreachable")


def _new_pool() -> ProcessPoolExecutor:
    # spawn, not fork: forking a process that runs threads can copy a held lock into the child.
    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=start_child,
        initargs=(os.getpid(),),
    )


# -- in the worker process --------------------------------------------------------------------


def _parse_file(
    model: type[ModelT], path: str, check: Callable[[ModelT], None] | None
) -> tuple[str, Any]:
    """("ok", the model) or ("invalid", the InvalidRequest's fields): exceptions with keyword
    arguments do not survive pickling, so the error travels as data."""
    with open(path, "rb") as file:
        body = file.read()
    try:
        parsed = parse_json_body(model, body, JSON_MEDIA_TYPE)  # checked before it was sent
        if check is not None:
            check(parsed)
        return "ok", parsed
    except InvalidRequest as exc:
        return "invalid", {"message": exc.message, "param": exc.param, "code": exc.code}


def _ready(models: tuple[type[BaseModel], ...]) -> int:
    return len(models)  # unpickling `models` imported their modules
