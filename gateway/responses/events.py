"""The Responses stream: SGLang's chunks as OpenAI's typed server-sent events.

`ResponseEvents` is a `chat_stream.StreamTranslator`. SGLang's chunks are first cleaned and read
for calls exactly as a chat stream's are (`translate.ChunkRewriter` with the tool-call
transform), then written as the documented event sequence, every event numbered:

    response.created, response.in_progress
    response.output_item.added (message), response.content_part.added (output_text)
    response.output_text.delta ... response.output_text.done
    response.content_part.done, response.output_item.done
    response.output_item.added (function_call), response.function_call_arguments.delta ...
    response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut it short)

A failure after the first event is an `error` event and `response.failed`. The stream has no
`[DONE]`: OpenAI's Responses streams end with the terminal event. The finished response is
handed to `on_finished` (the service stores it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.responses.convert import finished, function_call_item, message_item, output_text
from gateway.sglang.translate import ChunkRewriter


class ResponseEvents:
    """One Responses stream; see the module docstring."""

    def __init__(
        self,
        chunks: ChunkRewriter,
        response: dict[str, Any],
        *,
        max_tool_calls: int | None,
        on_finished: Callable[[dict[str, Any]], None],
    ) -> None:
        self._chunks = chunks
        self._response = response
        self._max_tool_calls = max_tool_calls
        self._on_finished = on_finished
        self._sequence = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # items done, and the one open (last)
        self._open: dict[str, Any] | None = None
        self._text: list[str] = []  # of the open message
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> open item
        self._finish_reason: str | None = None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._chunks.usage

    def translate(self, payload: bytes) -> bytes:
        chunk = self._chunks.clean(payload)
        frames: list[bytes] = []
        if not self._started:
            self._started = True
            frames.append(self._event("response.created", response=self._response))
            frames.append(self._event("response.in_progress", response=self._response))
        if chunk is not None:
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) == 0:  # the Responses API has one output
                    self._choice(choice, frames)
        return b"".join(frames)

    def close(self) -> bytes:
        frames: list[bytes] = []
        self._close_open(frames)
        done = finished(self._response, self._output, self._finish_reason, self._chunks.usage)
        kind = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
        frames.append(self._event(kind, response=done))
        self._on_finished(done)
        return b"".join(frames)

    def fail(self, error: GatewayError) -> bytes:
        frames: list[bytes] = []
        body = error.body()["error"]
        frames.append(
            self._event("error", code=body["code"], message=body["message"], param=body["param"])
        )
        failed = dict(self._response)
        failed["status"] = "failed"
        failed["output"] = self._output
        failed["error"] = {"code": body["code"] or body["type"], "message": body["message"]}
        frames.append(self._event("response.failed", response=failed))
        return b"".join(frames)

    # --- output items ----------------------------------------------------------------------

    def _choice(self, choice: dict[str, Any], frames: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text:
            if self._open is None or self._open["type"] != "message":
                self._close_open(frames)
                self._open_message(frames)
            assert self._open is not None
            self._text.append(text)
            frames.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self._open["id"],
                    output_index=len(self._output) - 1,
                    content_index=0,
                    delta=text,
                    logprobs=[],
                )
            )
        for call in delta.get("tool_calls") or ():
            self._call_delta(call, frames)
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]

    def _open_message(self, frames: list[bytes]) -> None:
        item = message_item("", status="in_progress")
        self._open, self._text = item, []
        self._output.append(item)
        frames.append(
            self._event("response.output_item.added", output_index=len(self._output) - 1, item=item)
        )
        frames.append(
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=len(self._output) - 1,
                content_index=0,
                part=output_text(""),
            )
        )

    def _call_delta(self, call: dict[str, Any], frames: list[bytes]) -> None:
        index = call.get("index", 0)
        if self._max_tool_calls is not None and index >= self._max_tool_calls:
            return
        function = call.get("function") or {}
        if "id" in call:
            self._close_open(frames)
            added = function_call_item(
                call["id"], function.get("name", ""), "", status="in_progress"
            )
            self._open = self._calls[index] = added
            self._output.append(added)
            frames.append(
                self._event(
                    "response.output_item.added", output_index=len(self._output) - 1, item=added
                )
            )
        item = self._calls.get(index)
        piece = function.get("arguments")
        if item is None or not piece:
            return
        item["arguments"] += piece
        frames.append(
            self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self._output.index(item),
                delta=piece,
            )
        )

    def _close_open(self, frames: list[bytes]) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        index = self._output.index(item)
        if item["type"] == "message":
            text = "".join(self._text)
            part = output_text(text)
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            frames.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
            frames.append(self._event("response.content_part.done", **where, part=part))
            item["content"] = [part]
        else:
            frames.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = "completed"
        frames.append(self._event("response.output_item.done", output_index=index, item=item))

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
