"""The work a chat request may ask of the event loop: counted before any of it is done.

Everything the gateway does to a request before SGLang sees it runs on the event loop that
also relays every open stream, so each step must be linear in the request and the request
bounded. The body's size and element count are bounded while it is read (`server.guards`);
once parsed, `check_budget` walks it once and refuses, with a 400 that names the field, what
would cost more than a legitimate request can need: too many messages, content parts (per
message and in all), characters of text, functions, or choices. Media have budgets of their own
(`gateway.media.memory`) and are prepared off the loop.
"""

from __future__ import annotations

from gateway.api.schemas import ChatCompletionRequest
from gateway.errors import InvalidRequest
from gateway.settings import Settings


def check_budget(request: ChatCompletionRequest, settings: Settings) -> None:
    """Raise `InvalidRequest` for the first limit `request` goes over."""
    messages = request.messages
    if len(messages) > settings.max_messages_per_request:
        raise InvalidRequest(
            f"Too many messages: {len(messages)}. At most "
            f"{settings.max_messages_per_request} are accepted.",
            param="messages",
        )
    if request.n is not None and request.n > settings.max_n:
        raise InvalidRequest(
            f"n is too large: {request.n}. This gateway allows at most {settings.max_n}.",
            param="n",
        )
    tools = len(request.tools or ()) + len(request.functions or ())
    if tools > settings.max_tools:
        raise InvalidRequest(
            f"Too many functions: {tools}. At most {settings.max_tools} are accepted.",
            param="tools" if request.tools else "functions",
        )
    parts = chars = 0
    for index, message in enumerate(messages):
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            if len(content) > settings.max_parts_per_message:
                raise InvalidRequest(
                    f"Too many content parts in one message: {len(content)}. At most "
                    f"{settings.max_parts_per_message} are accepted.",
                    param=f"messages[{index}].content",
                )
            parts += len(content)
            for part in content:
                chars += len(part.text or part.refusal or "")
        for call in message.tool_calls or ():
            chars += len(call.function.arguments)
        if chars > settings.max_text_chars:
            raise InvalidRequest(
                f"The request has more than {settings.max_text_chars} characters of text.",
                param=f"messages[{index}]",
            )
    if parts > settings.max_parts_per_request:
        raise InvalidRequest(
            f"Too many content parts: {parts}. At most {settings.max_parts_per_request} are "
            "accepted in one request.",
            param="messages",
        )
