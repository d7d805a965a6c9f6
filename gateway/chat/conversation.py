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
5. `tool` and `function` messages and assistant `tool_calls` are refused: Gemma 3n on SGLang has
   no tool-call parser, so there is nothing faithful to turn them into.

Media parts (`image_url`, `input_audio`, `audio_url`) are kept in place and listed in
`Conversation.media` with the `param` that names them, for the media stage to prepare; kinds the
caller does not accept are refused here with a clear 400.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.api.schemas import ChatMessage, ContentPart
from gateway.errors import InvalidRequest, UnsupportedContent

TEXT_JOINER = "\n\n"
MEDIA_PART_TYPES = frozenset({"image_url", "input_audio", "audio_url"})


@dataclass
class MediaPart:
    """A media part of the upstream conversation, to be prepared in place."""

    kind: str  # "image_url" | "input_audio" | "audio_url"
    param: str  # e.g. "messages[1].content[2].image_url"
    part: dict[str, Any]  # the upstream part dict; the media stage rewrites it


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
    messages: list[ChatMessage], accepted_media: Collection[str] = ()
) -> Conversation:
    """Gemma-ready upstream messages, or `InvalidRequest` naming the message that cannot be sent."""
    turns: list[_Turn] = []
    pending_system: list[str] = []
    media: list[MediaPart] = []

    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.role
        if role in ("tool", "function"):
            raise UnsupportedContent(
                f"'{role}' messages are not supported: Gemma 3n on this gateway has no tool "
                "calling, so tool results cannot be sent.",
                param=f"{where}.role",
            )
        if role == "assistant" and message.tool_calls:
            raise UnsupportedContent(
                "Assistant messages with 'tool_calls' are not supported: Gemma 3n on this "
                "gateway has no tool calling.",
                param=f"{where}.tool_calls",
            )
        if role in ("system", "developer"):
            pending_system.append(_text_only(message, where))
            continue
        if role == "user":
            parts = _user_parts(message, where, accepted_media, media)
            if pending_system:
                parts.insert(0, _text_part(TEXT_JOINER.join(pending_system)))
                pending_system = []
        else:  # assistant
            if pending_system:
                turns.append(_Turn("user", [_text_part(TEXT_JOINER.join(pending_system))]))
                pending_system = []
            parts = _assistant_parts(message, where)
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(_Turn(role, parts))

    if pending_system:
        if turns and turns[-1].role == "user":
            turns[-1].parts.append(_text_part(TEXT_JOINER.join(pending_system)))
        else:
            turns.append(_Turn("user", [_text_part(TEXT_JOINER.join(pending_system))]))
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
    where: str,
    accepted_media: Collection[str],
    media: list[MediaPart],
) -> list[dict[str, Any]]:
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
            media.append(MediaPart(part.type, f"{param}.{part.type}", upstream))
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


def _assistant_parts(message: ChatMessage, where: str) -> list[dict[str, Any]]:
    if message.content is None:
        raise InvalidRequest(
            f"Missing required parameter: '{where}.content' (an assistant message without "
            "tool calls needs content).",
            param=f"{where}.content",
        )
    if isinstance(message.content, str):
        return [_text_part(message.content)]
    parts = []
    for position, part in enumerate(message.content):
        if part.type not in ("text", "refusal"):
            raise InvalidRequest(
                f"Assistant messages may contain only 'text' and 'refusal' parts, not "
                f"'{part.type}'.",
                param=f"{where}.content[{position}].type",
            )
        parts.append(_text_part((part.text if part.type == "text" else part.refusal) or ""))
    return parts


def _upstream_message(turn: _Turn) -> dict[str, Any]:
    return {"role": turn.role, "content": join_adjacent_text(turn.parts)}


def join_adjacent_text(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Adjacent text parts joined by a blank line; all-text content becomes a plain string.

    Gemma's template trims each text part and concatenates parts with nothing between them, so
    ["Here is the text:", "Once upon..."] would reach the model as "Here is the text:Once upon...".
    """
    merged: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "text" and merged and merged[-1]["type"] == "text":
            merged[-1] = _text_part(merged[-1]["text"] + TEXT_JOINER + part["text"])
        else:
            merged.append(part)
    if len(merged) == 1 and merged[0]["type"] == "text":
        return str(merged[0]["text"])
    return merged
