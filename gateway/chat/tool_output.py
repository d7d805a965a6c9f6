"""The model's calls in OpenAI's shape: `message.tool_calls` and streamed `tool_calls` deltas.

For a request that offered functions (`tools.ToolPlan.offered`), what Gemma 3n wrote is read by
`tool_parser.py` and rewritten as OpenAI answers a call:

- non-streaming (`apply_to_completion`): `message.tool_calls` with `call_` ids, arguments as a
  JSON string, `content` null unless the model wrote text beside the calls, `finish_reason`
  "tool_calls"; for legacy `functions`, `message.function_call` and "function_call";
- streaming (`ToolCallChunks`, a `translate.ChunkRewriter` transform): content deltas pass as
  they come except text held while it may open a call; a call goes out as OpenAI's incremental
  deltas: index, id, type and name first, then the arguments in pieces; the finish chunk says
  "tool_calls" when there were calls.

Nothing here runs for requests without tools: the plain streaming path stays as it is.
"""

from __future__ import annotations

from typing import Any

from gateway.chat.tool_parser import (
    CallArguments,
    CallScanner,
    CallStart,
    Content,
    Event,
    parse_tool_output,
)
from gateway.chat.tools import ToolPlan, new_call_id


def apply_to_completion(completion: dict[str, Any], plan: ToolPlan) -> None:
    """Read each choice's content for calls and rewrite the choice in place."""
    for choice in completion.get("choices") or ():
        message = choice.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        parsed = parse_tool_output(message["content"], plan.names, plan.max_calls)
        if not parsed.calls:
            continue
        message["content"] = parsed.content
        if plan.legacy:
            first = parsed.calls[0]
            message["function_call"] = {"name": first.name, "arguments": first.arguments}
            choice["finish_reason"] = "function_call"
        else:
            message["tool_calls"] = [
                {
                    "id": new_call_id(),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in parsed.calls
            ]
            choice["finish_reason"] = "tool_calls"


class ToolCallChunks:
    """A stream's chunks with the choices' text read for calls; one scanner per choice."""

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._scanners: dict[int, CallScanner] = {}

    def __call__(self, chunk: dict[str, Any]) -> bool:
        """Rewrite `chunk` in place; False when nothing is left in it for the client."""
        choices = chunk.get("choices")
        if not choices:
            return True  # the usage chunk
        kept = []
        for choice in choices:
            if self._rewrite(choice):
                kept.append(choice)
        chunk["choices"] = kept
        return bool(kept)

    def _rewrite(self, choice: dict[str, Any]) -> bool:
        index = choice.get("index", 0)
        scanner = self._scanners.get(index)
        if scanner is None:
            scanner = self._scanners[index] = CallScanner(
                self._plan.names, self._plan.max_calls, forced=self._plan.forced
            )
        delta = choice.get("delta") or {}
        text = delta.pop("content", None)
        events = scanner.feed(text) if isinstance(text, str) and text else []
        finish = choice.get("finish_reason")
        if finish is not None:
            events += scanner.finish()
            if scanner.calls:
                choice["finish_reason"] = "function_call" if self._plan.legacy else "tool_calls"
        self._write(delta, events)
        choice["delta"] = delta
        if "role" in delta and "content" not in delta and not delta.keys() - {"role"}:
            delta["content"] = ""  # the first chunk, as OpenAI sends it
        return bool(delta) or finish is not None or bool(choice.get("logprobs"))

    def _write(self, delta: dict[str, Any], events: list[Event]) -> None:
        content = [event.text for event in events if isinstance(event, Content)]
        if content:
            delta["content"] = "".join(content)
        if self._plan.legacy:
            call: dict[str, Any] = {}  # legacy answers carry one call (max_calls is 1)
            for event in events:
                if isinstance(event, CallStart):
                    call = {"name": event.name, "arguments": ""}
                elif isinstance(event, CallArguments):
                    call["arguments"] = call.get("arguments", "") + event.text
            if call:
                delta["function_call"] = call
            return
        calls: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, CallStart):
                calls.append(
                    {
                        "index": event.index,
                        "id": new_call_id(),
                        "type": "function",
                        "function": {"name": event.name, "arguments": ""},
                    }
                )
            elif isinstance(event, CallArguments):
                if calls and calls[-1]["index"] == event.index:
                    calls[-1]["function"]["arguments"] += event.text
                else:
                    calls.append({"index": event.index, "function": {"arguments": event.text}})
        if calls:
            delta["tool_calls"] = calls
