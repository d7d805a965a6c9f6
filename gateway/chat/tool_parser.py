"""Reading Gemma 3n's output for tool calls: the whole text at once, or a stream piece by piece.

The model was asked (`tools.py`) to answer a call as ``{"name": ..., "parameters": {...}}``, and
several calls as a JSON list of those. What it writes is read as leniently as is safe:

- a call is a JSON object with a `name` that is one of the declared functions and `parameters`
  (or `arguments`, the OpenAI spelling models also use) holding an object, or a JSON string of
  one, and no other key; a JSON list of such objects is several calls, and so are several
  objects in a row;
- text around the calls is the message's content; a Markdown fence wrapped around a call
  (```json ... ```) goes with the call;
- anything else (JSON that is not a call, a name nobody declared, a call cut off by
  `max_tokens`) is plain content, unchanged: a call that fails to parse is never an error.

`parse_tool_output` reads a complete text (non-streaming answers). `CallScanner` reads a stream:
content goes out as it arrives except from the first character that may open a call, which is
held until the JSON value it opens is complete (then it is a call or content); with
`forced=True` (decoding constrained to calls, `tools.ToolPlan.constraint`) the output is known
to be calls, and the arguments go out piece by piece as the model writes them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

# A fence line the model may open before a call: ``` or ```json, ```tool_code ...
_FENCE_BEFORE = re.compile(r"```[A-Za-z_]*[ \t]*\n?[ \t]*$")
_FENCE_AFTER = re.compile(r"\s*```")  # used with .match(text, pos): anchored there
# The tail of the text that may still become such a fence: hold it back in a stream.
_PARTIAL_FENCE = re.compile(r"`{1,3}[A-Za-z_]*[ \t]*\n?[ \t]*$")
_OPENERS = "{["


@dataclass(frozen=True)
class ParsedCall:
    """One call: the function's name and its arguments as a JSON text."""

    name: str
    arguments: str


@dataclass
class ParsedOutput:
    """The model's text read as content and calls."""

    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


def parse_tool_output(text: str, names: frozenset[str], max_calls: int | None) -> ParsedOutput:
    """`text` as content and the calls in it (at most `max_calls`); no calls: content unchanged."""
    calls: list[ParsedCall] = []
    kept: list[str] = []
    position = search = 0
    while (start := _next_opener(text, search)) >= 0:
        end = json_value_end(text, start)
        value = _NOT_JSON if end is None else _load(text[start:end])
        if value is _NOT_JSON or end is None:
            search = start + 1  # prose braces: a call may still be inside
            continue
        found = calls_in(value, names)
        if found is None:
            search = end  # JSON, but not calls: nothing inside it is a call either
            continue
        before, resume = text[position:start], end
        fence = _FENCE_BEFORE.search(before)
        closing = _FENCE_AFTER.match(text, end)
        if fence is not None and closing is not None:
            before, resume = before[: fence.start()], closing.end()
        kept.append(before)
        calls.extend(found)
        position = search = resume
    if not calls:
        return ParsedOutput(text)
    kept.append(text[position:])
    content = "".join(kept).strip()
    return ParsedOutput(content or None, calls[:max_calls] if max_calls else calls)


_NOT_JSON: Any = object()


def _load(candidate: str) -> Any:
    try:
        return orjson.loads(candidate)
    except orjson.JSONDecodeError:
        pass
    # xgrammar's JSON strings admit raw control characters (byte tokens such as <0x0B>), which
    # strict JSON forbids; the arguments are written out again escaped.
    try:
        return json.loads(candidate, strict=False)
    except ValueError:
        return _NOT_JSON


def calls_in(value: Any, names: frozenset[str]) -> list[ParsedCall] | None:
    """The calls a decoded JSON value holds (a call object or a list of them), else None."""
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls = []
    for item in items:
        call = _as_call(item, names)
        if call is None:
            return None
        calls.append(call)
    return calls


_CALL_KEYS = frozenset({"name", "parameters", "arguments"})


def _as_call(item: Any, names: frozenset[str]) -> ParsedCall | None:
    if not isinstance(item, dict) or item.get("name") not in names or item.keys() - _CALL_KEYS:
        return None
    arguments = item.get("parameters", item.get("arguments"))
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return None
    if arguments is None and "parameters" not in item and "arguments" not in item:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(item["name"], orjson.dumps(arguments).decode())


def _next_opener(text: str, start: int) -> int:
    brace, bracket = text.find("{", start), text.find("[", start)
    if brace < 0 or bracket < 0:
        return max(brace, bracket)
    return min(brace, bracket)


def json_value_end(text: str, start: int) -> int | None:
    """The end of the bracketed value opening at `start` (brackets counted outside strings),
    or None if the text ends first."""
    depth = 0
    in_string = escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


# --- streaming -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: its index among the message's calls and the function's name."""

    index: int
    name: str


@dataclass(frozen=True)
class CallArguments:
    """A piece of the arguments of call `index` (their JSON text, in order)."""

    index: int
    text: str


Event = Content | CallStart | CallArguments


class CallScanner:
    """Reads one choice's streamed text into content and calls; see the module docstring."""

    def __init__(self, names: frozenset[str], max_calls: int | None, *, forced: bool) -> None:
        self._names = names
        self._max_calls = max_calls
        self._held = ""  # text not given out yet: from a possible call's first character
        self._calls = 0
        self._after_call = False  # a call was just given out: a closing fence may follow
        self._gap = False  # nothing but whitespace since the last call
        self._forced = _ForcedCalls(names, max_calls) if forced else None

    @property
    def calls(self) -> int:
        """Calls given out so far."""
        return self._calls

    def feed(self, text: str) -> list[Event]:
        if self._forced is not None:
            events = self._forced.feed(text)
            if not self._forced.failed:
                self._calls = self._forced.calls
                return events
            # Not the shape the constraint promised: read what came as unconstrained text.
            text, self._forced = self._forced.text, None
        self._held += text
        return self._scan(final=False)

    def finish(self) -> list[Event]:
        """The end of the text: whatever is still held is content."""
        if self._forced is not None and not self._forced.failed:
            return []
        if self._forced is not None:
            self._held, self._forced = self._forced.text, None
        events = self._scan(final=True)
        if self._held:
            self._content(events, self._held)
            self._held = ""
        return events

    def _scan(self, *, final: bool) -> list[Event]:
        events: list[Event] = []
        held = self._held
        while held:
            if self._after_call:
                closing = _FENCE_AFTER.match(held)
                if closing is not None:
                    held = held[closing.end() :]
                    self._after_call = False
                    continue
                if not final and held.strip(" \t\n`") == "" and len(held) < 8:
                    break  # may still become the closing fence
                self._after_call = False
            start = _next_opener(held, 0)
            if start < 0:
                partial = None if final else _PARTIAL_FENCE.search(held)
                cut = partial.start() if partial is not None else len(held)
                if self._gap and not final and not held[:cut].strip():
                    break  # whitespace after a call: wait for what follows it
                self._content(events, held[:cut])
                held = held[cut:]
                break
            fence = _FENCE_BEFORE.search(held, 0, start)
            lead = fence.start() if fence is not None else start
            if lead:
                self._content(events, held[:lead])
                held = held[lead:]
                start -= lead
            end = json_value_end(held, start)
            if end is None:
                if _cannot_open_call(held, start):
                    self._content(events, held[: start + 1])
                    held = held[start + 1 :]
                    continue
                break  # wait for the rest of the value
            value = _load(held[start:end])
            if value is _NOT_JSON:
                self._content(events, held[: start + 1])  # prose: a call may still be inside
                held = held[start + 1 :]
                continue
            found = calls_in(value, self._names)
            if found is None:
                self._content(events, held[:end])
                held = held[end:]
                continue
            if self._max_calls is not None:  # calls beyond the limit are dropped, as unasked
                found = found[: max(0, self._max_calls - self._calls)]
            for call in found:
                events.append(CallStart(self._calls, call.name))
                events.append(CallArguments(self._calls, call.arguments))
                self._calls += 1
            held = held[end:]
            self._after_call = fence is not None
            self._gap = True
        self._held = held
        return events

    def _content(self, events: list[Event], text: str) -> None:
        """Give out `text`; whitespace between or after calls is not content."""
        if self._gap:
            if not text.strip():
                return
            self._gap = False
        if text:
            events.append(Content(text))


def _cannot_open_call(text: str, start: int) -> bool:
    """True when the value opened at `start` is already known not to be a call (prose)."""
    rest = text[start + 1 :].lstrip()
    if not rest:
        return False
    expected = '"' if text[start] == "{" else "{"
    return rest[0] != expected


class _ForcedCalls:
    """Calls under the constraint: ``{"name": "f", "parameters": {...}}`` or a list of them,
    keys in that order, any whitespace between tokens. The arguments go out as they come.

    On anything else, `failed` is set and `text` holds everything fed, for the lenient reader.
    """

    _STEPS = ("{", '"name"', ":", "NAME", ",", '"parameters"', ":", "VALUE", "}")

    def __init__(self, names: frozenset[str], max_calls: int | None) -> None:
        self._names = names
        self._max_calls = max_calls
        self.text = ""
        self.failed = False
        self.calls = 0
        self._position = 0  # of the next character of `text` to read
        self._in_list: bool | None = None  # not known until the first character
        self._step = 0
        self._literal = 0  # characters of the current literal step matched
        self._name = ""
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._between = True  # before a call (or between calls)

    def feed(self, text: str) -> list[Event]:
        self.text += text
        events: list[Event] = []
        if self.failed:
            return events
        arguments: list[str] = []
        while self._position < len(self.text):
            char = self.text[self._position]
            self._position += 1
            if not self._read(char, events, arguments):
                if self.calls == 0:
                    self.failed = True
                    return []
                self._position = len(self.text)  # the constraint ended the calls; ignore the rest
                break
        if arguments:
            events.append(CallArguments(self.calls - 1, "".join(arguments)))
        return events

    def _read(self, char: str, events: list[Event], arguments: list[str]) -> bool:
        if self._between:
            if char.isspace():
                return True
            if self._in_list is None:
                self._in_list = char == "["
                if self._in_list:
                    return True
            elif self._in_list and (char == "]" or (char == "," and self.calls)):
                return True
            if char != "{":
                return False
            if self._max_calls is not None and self.calls >= self._max_calls:
                return False
            self._between, self._step, self._literal = False, 1, 0
            return True
        step = self._STEPS[self._step]
        if step == "VALUE":
            return self._read_value(char, arguments)
        if step == "NAME":
            return self._read_name(char, events, arguments)
        if self._literal == 0 and char.isspace():
            return True
        if char != step[self._literal]:
            return False
        self._literal += 1
        if self._literal == len(step):
            self._literal = 0
            self._step += 1
            if self._step == len(self._STEPS):
                self._between = True
        return True

    def _read_name(self, char: str, events: list[Event], arguments: list[str]) -> bool:
        if self._literal == 0:
            if char.isspace():
                return True
            if char != '"':
                return False
            self._literal, self._name = 1, ""
            return True
        if self._escaped:
            self._escaped = False
            self._name += char
        elif char == "\\":
            self._escaped = True
            self._name += char
        elif char == '"':
            try:
                name = orjson.loads(f'"{self._name}"')
            except orjson.JSONDecodeError:
                return False
            if name not in self._names:
                return False
            if arguments:  # the previous call's last arguments go before this call starts
                events.append(CallArguments(self.calls - 1, "".join(arguments)))
                arguments.clear()
            events.append(CallStart(self.calls, name))
            self.calls += 1
            self._literal, self._step = 0, self._step + 1
        else:
            self._name += char
        return True

    def _read_value(self, char: str, arguments: list[str]) -> bool:
        if self._depth == 0:
            if char.isspace():
                return True
            if char != "{":
                return False
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            elif char < " ":  # raw in xgrammar's strings; strict JSON wants it escaped
                char = f"\\u{ord(char):04x}"
            arguments.append(char)
            return True
        arguments.append(char)
        if char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._step += 1
        return True
