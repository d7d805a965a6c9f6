"""One SGLang stream relayed as server-sent events: `ChatStream`.

`ModelHandler.stream_chat_completion` opens the upstream request and reads up to the first frame
meant for the client (`read_first`), so that everything failing before it is still an HTTP error;
`streaming.EventStreamResponse` then iterates the stream and writes each item.

What the client's frames are is the `StreamTranslator`'s: `translate.ChunkRewriter` writes
OpenAI's chat chunks and ends with `data: [DONE]`; the Responses API writes its own events
(`gateway.responses.events`). The stream owns the rest: reading and decoding SGLang's events,
batching, the client leaving, shutdown, and failures after the first frame, which travel inside
the stream as the translator's error frames.

The relay is batched: each item is every frame ready at that moment, joined, so a gateway that
falls behind in a burst of tokens catches up with one write per stream instead of one per token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from gateway.errors import GatewayError, UpstreamBadResponse, UpstreamUnavailable
from gateway.sglang.translate import SSEDecoder, error_for_transport
from gateway.sglang.upstream import TransportError, UpstreamResponse


class StreamTranslator(Protocol):
    """Turns SGLang's event payloads into the client's frames (`translate.ChunkRewriter`)."""

    @property
    def usage(self) -> dict[str, Any] | None:
        """SGLang's usage, once its usage chunk was seen."""
        ...

    def translate(self, payload: bytes) -> bytes:
        """The frames for one SGLang payload (b"" for none); raises the error it carries."""
        ...

    def close(self) -> bytes:
        """The frames that end a complete stream."""
        ...

    def fail(self, error: GatewayError) -> bytes:
        """The frames that end a stream that failed after its first frame."""
        ...


class StreamOwner(Protocol):
    """What a stream reports to: the set of open streams, usage and errors (`ModelHandler`)."""

    open_streams: set[ChatStream]

    def record_usage(self, usage: dict[str, Any] | None) -> None: ...

    def record_error(self, error: GatewayError) -> None: ...


class ChatStream:
    """An SGLang stream whose first event is already read; iterate it for OpenAI's SSE frames.

    Each item is every frame ready at that moment, joined. Iteration ends with `data: [DONE]`,
    after an error event if SGLang failed mid-stream or the gateway ended the stream for shutdown
    (`end_for_shutdown`), and closes the upstream response however it ends. `cancel` (the client
    left) closes the upstream connection at once, which makes SGLang stop generating, and ends
    the iteration without an error. `aclose` may be called any number of times.
    """

    def __init__(
        self,
        response: UpstreamResponse,
        decoder: SSEDecoder,
        rewriter: StreamTranslator,
        handler: StreamOwner,
    ) -> None:
        self._response = response
        self._decoder = decoder
        self._rewriter = rewriter
        self._handler = handler
        self._first = b""
        self._pending: list[bytes] = []  # payloads read but not translated yet
        self._done = False  # SGLang's [DONE] was seen
        self._error: GatewayError | None = None  # carried by SGLang's stream
        self._ending = False  # ended by the gateway for shutdown
        self._cancelled = False  # the client left
        self._closed = False
        self.final = False  # the item being yielded is the last one: nothing follows it

    async def read_first(self) -> None:
        """Read up to the first frame meant for the client, raising what SGLang answered
        instead; that frame is the first item of the iteration, what came with it the next."""
        translate = self._rewriter.translate
        while True:
            payloads = await self._read()
            for index, payload in enumerate(payloads):
                if payload == b"[DONE]":
                    raise UpstreamBadResponse("The model server's stream ended without a chunk.")
                frames = translate(payload)
                if frames:
                    self._first = frames
                    self._pending = payloads[index + 1 :]
                    self._handler.open_streams.add(self)
                    return

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            yield self._first
            frames = b""
            error: GatewayError | None = None
            try:
                while True:
                    payloads, self._pending = self._pending or await self._read(), []
                    frames = self._translate(payloads)
                    if self._done or self._error is not None:
                        break
                    if frames:
                        yield frames
                        frames = b""
            except GatewayError as exc:
                error = exc
            except TransportError as exc:
                if not (self._ending or self._cancelled):
                    error = error_for_transport(exc)
            if self._cancelled:
                return
            error = error or self._error
            if self._ending:
                error = UpstreamUnavailable(
                    "The gateway is shutting down; the response was cut short.", retry_after=1
                )
            if error is None:
                try:
                    ending = self._rewriter.close()
                except GatewayError as exc:  # the translator found the stream incomplete
                    error = exc
                else:
                    self.final = self._response.complete
                    yield frames + ending
                    await self._read_to_end()
                    return
            self._handler.record_error(error)
            self.final = True
            yield frames + self._rewriter.fail(error)
        finally:
            self.aclose()

    def _translate(self, payloads: list[bytes]) -> bytes:
        """OpenAI's frames for SGLang's payloads, joined; notes [DONE] and an error event."""
        translate = self._rewriter.translate
        parts: list[bytes] = []
        try:
            for payload in payloads:
                if payload == b"[DONE]":
                    self._done = True
                    break
                parts.append(translate(payload))
        except GatewayError as exc:
            self._error = exc
        return b"".join(parts)

    async def _read(self) -> list[bytes]:
        data = await self._response.read_some()
        if not data:
            raise UpstreamBadResponse("The model server's stream ended before it was complete.")
        return self._decoder.feed(data)

    async def _read_to_end(self) -> None:
        """After [DONE]: the chunked terminator, so that the connection goes back to the pool."""
        if not self._response.complete:
            # On failure the connection is closed rather than reused; the client has its answer.
            with contextlib.suppress(TransportError):
                await self._response.read()

    def cancel(self) -> None:
        """The client left: close the upstream connection now; iteration ends quietly."""
        self._cancelled = True
        self.aclose()

    def end_for_shutdown(self) -> None:
        """Cut the stream short: its iteration ends with an error event and `[DONE]`."""
        self._ending = True
        self.aclose()

    def aclose(self) -> None:
        self._response.close()
        if not self._closed:
            self._closed = True
            self._handler.open_streams.discard(self)
            self._handler.record_usage(self._rewriter.usage)
