"""tool_parser.py: Gemma's text read for calls, whole and streamed, forced and not."""

from __future__ import annotations

import json

import pytest

from gateway.chat.tool_parser import (
    CallArguments,
    CallScanner,
    CallStart,
    Content,
    Event,
    parse_tool_output,
)

NAMES = frozenset({"get_weather", "add"})


def call(name: str, **arguments: object) -> str:
    return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)


def streamed(text: str, *, forced: bool, piece: int = 3, max_calls: int | None = None) -> list:
    """Feed `text` in pieces; merge the events into (content, [(name, arguments)])."""
    scanner = CallScanner(NAMES, max_calls, forced=forced)
    events: list[Event] = []
    for start in range(0, len(text), piece):
        events += scanner.feed(text[start : start + piece])
    events += scanner.finish()
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: list[list[str]] = []
    for event in events:
        if isinstance(event, CallStart):
            assert event.index == len(calls)
            calls.append([event.name, ""])
        elif isinstance(event, CallArguments):
            calls[event.index][1] += event.text
    return [content, [(name, json.loads(arguments)) for name, arguments in calls]]


def parsed(text: str, max_calls: int | None = None) -> list:
    output = parse_tool_output(text, NAMES, max_calls)
    return [output.content, [(c.name, json.loads(c.arguments)) for c in output.calls]]


CASES = [
    ("plain text", "It is sunny.", ["It is sunny.", []]),
    ("one call", call("add", a=1, b=2), [None, [("add", {"a": 1, "b": 2})]]),
    (
        "nested and unicode",
        call("get_weather", city="Zürich 北京", where={"a": [1, {"b": "}]{"}], "q": '"'}),
        [
            None,
            [("get_weather", {"city": "Zürich 北京", "where": {"a": [1, {"b": "}]{"}], "q": '"'}})],
        ],
    ),
    (
        "a list of calls",
        "[" + call("add", a=1, b=2) + ", " + call("get_weather", city="Oslo") + "]",
        [None, [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Oslo"})]],
    ),
    (
        "text around a fenced call",
        "Sure.\n```json\n" + call("add", a=1, b=2) + "\n```\nDone.",
        ["Sure.\n\nDone.", [("add", {"a": 1, "b": 2})]],
    ),
    (
        "calls one per line",
        call("add", a=1, b=2) + "\n" + call("add", a=3, b=4),
        [None, [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]],
    ),
    (
        "arguments as a JSON string (OpenAI's spelling)",
        '{"name": "add", "arguments": "{\\"a\\": 1}"}',
        [None, [("add", {"a": 1})]],
    ),
]
NOT_CALLS = [
    ("truncated", call("add", a=1, b=2)[:-5]),
    ("an undeclared function", call("rm_rf", path="/")),
    ("parameters not an object", '{"name": "add", "parameters": [1, 2]}'),
    ("prose braces", "use {x} or [y] in f(x)"),
    ("JSON that is not a call", '{"answer": 42, "name": "add"}'),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_calls_are_read_alike_whole_and_streamed(text: str, expected: list) -> None:
    assert parsed(text) == expected
    for piece in (1, 3, 7, 1000):
        assert streamed(text, forced=False, piece=piece) == [expected[0] or "", expected[1]]


@pytest.mark.parametrize("text", [c[1] for c in NOT_CALLS], ids=[c[0] for c in NOT_CALLS])
def test_what_is_not_a_call_stays_content_unchanged(text: str) -> None:
    assert parsed(text) == [text, []]
    assert streamed(text, forced=False) == [text, []]


def test_a_limit_on_calls_drops_the_rest() -> None:
    text = "[" + call("add", a=1, b=2) + ", " + call("add", a=3, b=4) + "]"
    assert parsed(text, max_calls=1) == [None, [("add", {"a": 1, "b": 2})]]
    assert streamed(text, forced=False, max_calls=1) == ["", [("add", {"a": 1, "b": 2})]]


def test_text_streams_at_once_until_something_may_open_a_call() -> None:
    scanner = CallScanner(NAMES, None, forced=False)
    assert scanner.feed("Hello ") == [Content("Hello ")]
    assert scanner.feed("world {") == [Content("world ")]
    assert scanner.feed('"name": "add", "parameters": {"a"') == []  # held: may be a call
    assert scanner.feed(": 1}}") == [CallStart(0, "add"), CallArguments(0, '{"a":1}')]
    assert scanner.feed(" bye") == [Content(" bye")]


def test_prose_braces_are_given_out_once_they_cannot_open_a_call() -> None:
    scanner = CallScanner(NAMES, None, forced=False)
    events = scanner.feed("a {b")  # "{b" cannot start a JSON object: nothing is held
    assert "".join(e.text for e in events if isinstance(e, Content)) == "a {b"
    events = scanner.feed(" [1")  # nor can "[1" start a list of calls
    assert "".join(e.text for e in events if isinstance(e, Content)) == " [1"
    assert scanner.feed(" {") == [Content(" ")]  # but "{" alone may: held
    assert scanner.finish() == [Content("{")]


def test_forced_calls_stream_their_arguments_as_written() -> None:
    text = call("get_weather", city="Paris", days=[1, 2])
    scanner = CallScanner(NAMES, None, forced=True)
    events: list[Event] = []
    for char in text:
        events += scanner.feed(char)
    pieces = [e.text for e in events if isinstance(e, CallArguments)]
    assert isinstance(events[0], CallStart) and events[0].name == "get_weather"
    assert len(pieces) > 10  # one piece per character fed, once inside the arguments
    assert json.loads("".join(pieces)) == {"city": "Paris", "days": [1, 2]}
    assert scanner.finish() == []


def test_forced_output_of_another_shape_is_read_leniently() -> None:
    assert streamed("no call at all", forced=True) == ["no call at all", []]
    array = "[" + call("add", a=1, b=2) + ",\n " + call("add", a=5, b=6) + "]"
    assert streamed(array, forced=True)[1] == [("add", {"a": 1, "b": 2}), ("add", {"a": 5, "b": 6})]


def test_raw_control_characters_in_strings_come_out_escaped() -> None:
    raw = '{"name": "add", "parameters": {"a": "x\x0by"}}'  # xgrammar admits them
    assert parsed(raw) == [None, [("add", {"a": "x\x0by"})]]
    assert streamed(raw, forced=True) == ["", [("add", {"a": "x\x0by"})]]
    scanner = CallScanner(NAMES, None, forced=True)
    pieces = [e.text for e in scanner.feed(raw) if isinstance(e, CallArguments)]
    assert "\\u000b" in "".join(pieces)  # strict JSON for the client
