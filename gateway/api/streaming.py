"""The server-sent-events response: relays a `ChatStream` to the client and notices it leaving.

This replaces sse-starlette's `EventSourceResponse` on the hot path. The frames are already
OpenAI's SSE bytes (`chat_stream.ChatStream`), so what is left to do per write is one ASGI
`send`; sse-starlette spent more than that around it (a cancel scope and a timeout per chunk, and
a task group of three tasks per response), which measured about as much CPU per token as the
whole budget of issue 7.

The chunks between the first and the last message go to the `send` of the outermost
middleware (`request_context.STREAM_BODY_SEND`), past four wrappers that only look at a
response's start and end: ~8 % of the CPU per token in a py-spy profile of 256 streams.

A client that disconnects is noticed by one watcher task per stream, waiting on `receive()`. It
cancels the stream, which closes the upstream connection at once (SGLang stops generating), so
the gateway never keeps generating for nobody, even while it waits for a slow next token.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.server.request_context import STREAM_BODY_SEND
from gateway.sglang.chat_stream import ChatStream

_RAW_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx in front must not buffer the stream
)


class EventStreamResponse(Response):
    """`text/event-stream` from a `ChatStream`; each item of the stream is one write."""

    def __init__(self, stream: ChatStream) -> None:
        # Not Response.__init__: the headers never change, so they are built once.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_RAW_HEADERS)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        send_body: Send = scope.get(STREAM_BODY_SEND, send)
        watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, stream))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            ended = False
            async for body in stream:
                if stream.final:  # the end of the response in the same write as [DONE]
                    ended = True
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                else:
                    await send_body({"type": "http.response.body", "body": body, "more_body": True})
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            stream.aclose()


async def _cancel_on_disconnect(receive: Receive, stream: ChatStream) -> None:
    # The request body has been read: the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.cancel()
