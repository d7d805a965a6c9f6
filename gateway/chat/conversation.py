"""Fit an OpenAI conversation to Gemma 3n's chat template without changing what it says.

Gemma 3n's template (which SGLang applies) knows only `user` and `model` turns that strictly
alternate, starting with `user`; it has no system role: it prefixes the first system message's text
to the first user turn, and raises "Conversation roles must alternate" for anything else. OpenAI
clients routinely send what it rejects. The rules here, in order:

1. `developer` is OpenAI's new name for `system`: treated the same.
2. System text is what Gemma prefixes to a user turn, so each system message's text is prefixed to
   the next user turn (joined by a blank line, as the template does); when an assistant turn or
   the end comes first, it becomes a user turn of its own.
3. Consecutive turns of the same role are merged into one (texts joined by a blank line).
4. A conversation that opens with the assistant (a greeting) gets an empty user turn before it.
5. Tools (`tools.py`): when the request offers functions, their definitions and the calling
   instruction open the first user turn, after the system text. An assistant's `tool_calls` (or
   legacy `function_call`) are written into its turn as the model writes calls; `tool` (and
   legacy `function`) results become user text, so a call and its result alternate like any
   other turns. OpenAI's ordering rules are checked: a `tool` message answers a call of the
   assistant message before it, and every call is answered before the conversation goes on.

Media parts (`image_url`, `input_audio`, `audio_url`) are kept in place and listed in
`Conversation.media` with the `param` that names them, for the media stage to prepare; kinds the
caller does not accept are refused here with a clear 400.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.api.schemas import ChatMessage, ContentPart
from gateway.chat.tools import ToolPlan, render_calls, render_result
from gateway.errors import InvalidRequest, UnsupportedContent

TEXT_JOINER = "\n\n"
MEDIA_PART_TYPES = frozenset({"image_url", "input_audio", "audio_url"})


@dataclass
class MediaPart:
    """A media part of the upstream conversation, to be prepared in place."""

    kind: str  # "image_url" | "input_audio" | "audio_url"
    param: str  # e.g. "messages[1].content[2].image_url"
    part: dict[str, Any]  # the upstream part dict; the media stage rewrites it
    source: tuple[int, int]  # (message, part) index in the client's messages
    prepared: list[dict[str, Any]] | None = None  # what the media stage made of it


@dataclass
class Conversation:
    """The upstream `messages` list and the media parts in it."""

    messages: list[dict[str, Any]]
    media: list[MediaPart] = field(default_factory=list)


@dataclass
class _Turn:
    role: str  # "user" | "assistant"
    parts: list[dict[str, Any]]


def normalise_conversation(
    messages: list[ChatMessage],
    accepted_media: Collection[str] = (),
    tools: ToolPlan | None = None,
) -> Conversation:
    """Gemma-ready upstream messages, or `InvalidRequest` naming the message that cannot be sent."""
    turns: list[_Turn] = []
    pending_system: list[str] = []
    if tools is not None and tools.offered:
        # The functions are part of the instructions: first in the first user turn, after the
        # system text that comes before that turn.
        preamble: str | None = tools.prompt()
    else:
        preamble = None
    media: list[MediaPart] = []
    calls = _OpenCalls()

    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.role
        if role not in ("tool", "function"):
            calls.check_answered(where)
        if role in ("system", "developer"):
            pending_system.append(_text_only(message, where))
            continue
        if role == "assistant":
            turn_role = "assistant"
            if pending_system or preamble is not None:
                turns.append(_Turn("user", [_text_part(_instructions(pending_system, preamble))]))
                pending_system, preamble = [], None
            parts = _assistant_parts(message, where, calls)
        else:
            turn_role = "user"
            if role == "user":
                parts = _user_parts(message, index, accepted_media, media)
            else:
                parts = [_text_part(_tool_result(message, where, calls))]
            if pending_system or preamble is not None:
                parts.insert(0, _text_part(_instructions(pending_system, preamble)))
                pending_system, preamble = [], None
        if turns and turns[-1].role == turn_role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(_Turn(turn_role, parts))
    calls.check_answered(f"messages[{len(messages)}]")

    if pending_system or preamble is not None:
        text = _text_part(_instructions(pending_system, preamble))
        if turns and turns[-1].role == "user":
            turns[-1].parts.append(text)
        else:
            turns.append(_Turn("user", [text]))
    if turns[0].role == "assistant":
        turns.insert(0, _Turn("user", [_text_part("")]))

    return Conversation([_upstream_message(turn) for turn in turns], media)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _text_only(message: ChatMessage, where: str) -> str:
    """A system message's text; OpenAI allows only text parts there."""
    if message.content is None:
        raise InvalidRequest(
            f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
        )
    if isinstance(message.content, str):
        return message.content
    texts = []
    for position, part in enumerate(message.content):
        if part.type != "text":
            raise InvalidRequest(
                f"'{message.role}' messages may contain only text parts, not '{part.type}'.",
                param=f"{where}.content[{position}].type",
            )
        texts.append(part.text or "")
    return TEXT_JOINER.join(texts)


def _user_parts(
    message: ChatMessage,
    index: int,
    accepted_media: Collection[str],
    media: list[MediaPart],
) -> list[dict[str, Any]]:
    where = f"messages[{index}]"
    if message.content is None:
        raise InvalidRequest(
            f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
        )
    if isinstance(message.content, str):
        return [_text_part(message.content)]
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(message.content):
        param = f"{where}.content[{position}]"
        if part.type == "text":
            parts.append(_text_part(part.text or ""))
        elif part.type in MEDIA_PART_TYPES and part.type in accepted_media:
            upstream = part.model_dump(include={"type", part.type}, exclude_none=True)
            media.append(MediaPart(part.type, f"{param}.{part.type}", upstream, (index, position)))
            parts.append(upstream)
        else:
            raise UnsupportedContent(_unsupported_part_message(part), param=f"{param}.type")
    return parts


def _unsupported_part_message(part: ContentPart) -> str:
    if part.type in ("image_url", "input_audio", "audio_url"):
        kind = "Image" if part.type == "image_url" else "Audio"
        return f"{kind} input is not enabled on this gateway ('{part.type}' content part)."
    if part.type == "refusal":
        return "'refusal' content parts are only allowed in assistant messages."
    return f"'{part.type}' content parts are not supported by Gemma 3n on this gateway."


def _assistant_parts(message: ChatMessage, where: str, calls: _OpenCalls) -> list[dict[str, Any]]:
    made = [(call.function.name, call.function.arguments) for call in message.tool_calls or ()]
    if message.function_call is not None:
        made.append((message.function_call.name, message.function_call.arguments))
    if message.content is None and not made:
        raise InvalidRequest(
            f"Missing required parameter: '{where}.content' (an assistant message without "
            "tool calls needs content).",
            param=f"{where}.content",
        )
    parts = []
    if isinstance(message.content, str):
        parts.append(_text_part(message.content))
    else:
        for position, part in enumerate(message.content or ()):
            if part.type not in ("text", "refusal"):
                raise InvalidRequest(
                    f"Assistant messages may contain only 'text' and 'refusal' parts, not "
                    f"'{part.type}'.",
                    param=f"{where}.content[{position}].type",
                )
            parts.append(_text_part((part.text if part.type == "text" else part.refusal) or ""))
    if made:
        calls.open(where, {call.id: call.function.name for call in message.tool_calls or ()})
        parts = [part for part in parts if part["text"]] + [_text_part(render_calls(made))]
    return parts


class _OpenCalls:
    """The tool calls of the last assistant message that still wait for their `tool` result."""

    def __init__(self) -> None:
        self._where = ""
        self._waiting: dict[str, str] = {}  # call id -> function name
        self._names: dict[str, str] = {}  # every call id seen -> function name

    def open(self, where: str, calls: dict[str, str]) -> None:
        self._where, self._waiting = where, dict(calls)
        self._names.update(calls)

    def answer(self, call_id: str, where: str) -> str:
        """The function name of the call `call_id`, which a `tool` message at `where` answers."""
        if call_id not in self._waiting:
            raise InvalidRequest(
                "Invalid parameter: messages with role 'tool' must be a response to a preceding "
                f"message with 'tool_calls' (no waiting call has the id '{call_id}').",
                param=f"{where}.tool_call_id",
            )
        return self._waiting.pop(call_id)

    def check_answered(self, where: str) -> None:
        if self._waiting:
            missing = ", ".join(self._waiting)
            raise InvalidRequest(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {missing}",
                param=f"{self._where}.tool_calls",
            )


def _tool_result(message: ChatMessage, where: str, calls: _OpenCalls) -> str:
    """A `tool` (or legacy `function`) message as the user text Gemma reads."""
    if message.role == "tool":
        if message.tool_call_id is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.tool_call_id'.",
                param=f"{where}.tool_call_id",
            )
        name: str | None = calls.answer(message.tool_call_id, where)
    else:
        if message.name is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.name'.", param=f"{where}.name"
            )
        name = message.name
    content = "" if message.content is None else _text_only(message, where)
    return render_result(name, content)


def _instructions(system: list[str], preamble: str | None) -> str:
    return TEXT_JOINER.join([*system, preamble] if preamble is not None else system)


def _upstream_message(turn: _Turn) -> dict[str, Any]:
    return {"role": turn.role, "content": join_adjacent_text(turn.parts)}


def join_adjacent_text(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Adjacent text parts joined by a blank line; all-text content becomes a plain string.

    Gemma's template trims each text part and concatenates parts with nothing between them, so
    ["Here is the text:", "Once upon..."] would reach the model as "Here is the text:Once upon...".
    Linear: each run of text is joined once (concatenating as it went was quadratic).
    """
    merged: list[dict[str, Any]] = []
    run: list[str] = []
    for part in parts:
        if part["type"] == "text":
            run.append(part["text"])
            continue
        if run:
            merged.append(_text_part(TEXT_JOINER.join(run)))
            run = []
        merged.append(part)
    if run:
        merged.append(_text_part(TEXT_JOINER.join(run)))
    if len(merged) == 1 and merged[0]["type"] == "text":
        return str(merged[0]["text"])
    return merged
