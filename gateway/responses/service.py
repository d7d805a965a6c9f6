"""The service behind `/v1/responses`: create (plain or streamed), retrieve, delete, input items.

A request is checked for what this gateway cannot do (`refuse_unsupported`), its conversation
assembled (the stored one of `previous_response_id`, then `instructions` and the new input;
instructions are not carried over, as OpenAI documents), translated into a chat request
(`convert`) and run by the chat backend (`model_handler.ModelHandler`, injected, so this package
needs nothing above it). The conversation that was stored is already prepared, so the backend
is told to leave its media alone. Errors the chat side raises name the Responses field the
client wrote (`input[2]...`, `max_output_tokens`), not the chat field it became.

With `store` (OpenAI's default), the response, its input items and the conversation are kept
(`store.ResponseStore`); a streamed response is stored once its last event is written, and a
read of it waits for that write, so a `GET` right after the stream finds it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from gateway.api.schemas import ChatCompletionRequest
from gateway.api.validation import invalid_request_from
from gateway.chat.conversation import Conversation
from gateway.errors import GatewayError, InvalidRequest, NotFound, UnsupportedContent
from gateway.responses import convert
from gateway.responses.events import ResponseEvents
from gateway.responses.schemas import ResponsesRequest
from gateway.responses.store import ResponseStore, StoredResponse
from gateway.sglang.chat_stream import ChatStream, StreamTranslator
from gateway.sglang.translate import ChunkRewriter


class PreparedChat(Protocol):
    conversation: Conversation


class ChatBackend(Protocol):
    """What the service needs of `model_handler.ModelHandler`."""

    async def prepare_chat(
        self, request: ChatCompletionRequest, *, stream: bool, prepared_messages: int = 0
    ) -> Any: ...

    async def complete(self, prepared: Any) -> dict[str, Any]: ...

    def chat_chunks(self, prepared: Any) -> ChunkRewriter: ...

    async def open_stream(self, prepared: Any, translator: StreamTranslator) -> ChatStream: ...


# Chat fields that stand for a Responses field of another name.
_RENAMED_PARAMS = {
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}
_RENAMED_ITEM_FIELDS = {".tool_call_id": ".call_id", ".tool_calls": ""}
_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\]")
_TOOL_PARAM = re.compile(r"^tools\[(\d+)\]\.function")


def refuse_unsupported(request: ResponsesRequest) -> None:
    """A clear 400 for what OpenAI offers and this gateway does not."""
    refusals = (
        ("background", request.background, "Background responses are not supported."),
        (
            "conversation",
            request.conversation,
            "The Conversations API is not supported; use previous_response_id.",
        ),
        ("prompt", request.prompt, "Prompt templates are not supported."),
        (
            "top_logprobs",
            request.top_logprobs,
            "Log probabilities are not supported on /v1/responses; use /v1/chat/completions.",
        ),
    )
    for name, value, message in refusals:
        if value:
            raise UnsupportedContent(message, param=name)
    if request.input is None and request.previous_response_id is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")


class ResponsesService:
    """`/v1/responses` over a chat backend and a response store."""

    def __init__(self, backend: ChatBackend, store: ResponseStore) -> None:
        self._backend = backend
        self._store = store
        self._writes: dict[str, asyncio.Task[None]] = {}  # streamed responses being stored

    async def create(self, request: ResponsesRequest) -> bytes | ChatStream:
        """The response body, or a stream positioned after its first event."""
        refuse_unsupported(request)
        history: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            previous = await self._get(request.previous_response_id)
            if previous is None:
                raise InvalidRequest(
                    f"Previous response with id '{request.previous_response_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history = previous.history
        items = convert.input_items(request)
        new = convert.chat_messages(items)
        head: list[dict[str, Any]] = []
        sources: list[str] = []
        if request.instructions is not None:
            head.append({"role": "system", "content": request.instructions})
            sources.append("instructions")
        head += history
        sources += ["previous_response_id"] * len(history)
        sources += new.sources
        stream = bool(request.stream)
        chat = convert.chat_request(request, head + new.messages, stream=stream)
        try:
            chat_request = ChatCompletionRequest.model_validate(chat)
            prepared = await self._backend.prepare_chat(
                chat_request, stream=stream, prepared_messages=len(head)
            )
        except ValidationError as exc:
            raise _renamed(invalid_request_from(exc), sources) from None
        except GatewayError as exc:
            raise _renamed(exc, sources) from None
        response = convert.response_skeleton(request, convert.new_id("resp"))
        conversation = history + _prepared_messages(chat_request, prepared.conversation, len(head))

        def keep(done: dict[str, Any]) -> StoredResponse:
            turn = convert.history_messages(done["output"])
            return StoredResponse(done["id"], done, items, conversation + turn)

        if not stream:
            completion = await self._backend.complete(prepared)
            output = convert.output_items(completion, request.max_tool_calls)
            finish = completion["choices"][0].get("finish_reason")
            done = convert.finished(response, output, finish, completion.get("usage"))
            if done["store"]:
                await self._store.put(keep(done))
            return orjson.dumps(done)

        def store_later(done: dict[str, Any]) -> None:
            if done["store"]:
                write = asyncio.get_running_loop().create_task(self._store.put(keep(done)))
                self._writes[done["id"]] = write
                write.add_done_callback(lambda _: self._writes.pop(done["id"], None))

        events = ResponseEvents(
            self._backend.chat_chunks(prepared),
            response,
            max_tool_calls=request.max_tool_calls,
            on_finished=store_later,
        )
        return await self._backend.open_stream(prepared, events)

    async def retrieve(self, response_id: str) -> bytes:
        return orjson.dumps((await self._found(response_id)).response)

    async def delete(self, response_id: str) -> bytes:
        await self._settle(response_id)
        if not await self._store.delete(response_id):
            raise _not_found(response_id)
        return orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True})

    async def input_items(
        self, response_id: str, *, limit: int, order: str, after: str | None
    ) -> bytes:
        """OpenAI's list of a response's input items: newest first unless `order` is asc."""
        items = list((await self._found(response_id)).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise InvalidRequest(f"No input item with id '{after}'.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return orjson.dumps(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )

    async def aclose(self) -> None:
        """Finish the writes under way (shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes.values(), return_exceptions=True)

    async def _found(self, response_id: str) -> StoredResponse:
        stored = await self._get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return stored

    async def _get(self, response_id: str) -> StoredResponse | None:
        await self._settle(response_id)
        return await self._store.get(response_id)

    async def _settle(self, response_id: str) -> None:
        write = self._writes.get(response_id)
        if write is not None:
            await asyncio.shield(write)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.")


def _prepared_messages(
    request: ChatCompletionRequest, conversation: Conversation, start: int
) -> list[dict[str, Any]]:
    """The request's messages from `start` on as chat messages, each media part replaced by what
    it was prepared into, so that a later turn sends exactly what SGLang got."""
    messages = [
        message.model_dump(by_alias=True, exclude_none=True) for message in request.messages[start:]
    ]
    replaced = sorted(
        (part for part in conversation.media if part.source[0] >= start and part.prepared),
        key=lambda part: part.source,
        reverse=True,  # later parts first, so earlier positions stay valid
    )
    for part in replaced:
        index, position = part.source
        content = messages[index - start]["content"]
        content[position : position + 1] = part.prepared or []
    return messages


def _renamed(error: GatewayError, sources: list[str]) -> GatewayError:
    """`error` naming the Responses field behind the chat field it names."""
    param = error.param
    if param is None:
        return error
    renamed = _RENAMED_PARAMS.get(param)
    if renamed is None and (match := _MESSAGE_PARAM.match(param)):
        index = int(match.group(1))
        if index < len(sources):
            source = sources[index]
            if source in ("instructions", "previous_response_id"):
                renamed = source
            else:  # the chat message's field, in the input item's words
                rest = param[match.end() :]
                renamed = source + _RENAMED_ITEM_FIELDS.get(rest, rest)
    if renamed is None and (match := _TOOL_PARAM.match(param)):
        renamed = f"tools[{match.group(1)}]" + param[match.end() :]
    if renamed is None:
        return error
    error.param = renamed
    error.message = error.message.replace(f"'{param}'", f"'{renamed}'")
    return error
