"""Tool calling for Gemma 3n: what a request's tools become in the prompt and in the constraint.

Gemma 3n has no tool tokens and SGLang has no tool-call parser for it, so the gateway does what
Google documents for Gemma (https://ai.google.dev/gemma/docs/capabilities/function-calling): the
function definitions go into the prompt with an instruction to answer a call as JSON,

    {"name": function name, "parameters": dictionary of argument name and its value}

(the JSON variant of Google's two prompts: OpenAI's arguments are JSON, so a call needs no
conversion, and a JSON Schema of the call constrains decoding directly). Several calls are a
JSON list of such objects. Tool results, which Gemma's template has no role for, go back as
user text in a ```tool_output fence (the form of Google's Gemma cookbook), and a call the
assistant made earlier is written into its turn exactly as the model would have written it.

`plan_tools` reads `tools`/`tool_choice`/`parallel_tool_calls` (and the legacy
`functions`/`function_call`, mapped onto them) into a `ToolPlan`, checking what OpenAI checks.
`ToolPlan.constraint` is the decoding constraint for SGLang (xgrammar, its default grammar
backend, compiles it; what SGLang 0.5.21 accepts is recorded in docs/testing.md):

- the model must call (a required or named `tool_choice`): a `response_format` of type
  `json_schema` that admits only calls of the declared functions, arguments matching their
  `parameters`;
- the model may call (`auto`) and a function is `strict`: a `structural_tag` whose trigger is
  the start of a call, `{"name": "`: text stays free, but once the model starts a call it can
  only name a declared function and, for a strict one, write arguments its schema admits.

Reading the model's output is `tool_parser.py`'s.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.api.schemas import ChatCompletionRequest, FunctionDefinition, NamedToolChoice
from gateway.errors import InvalidRequest

Choice = Literal["none", "auto", "required"]

TOOL_OUTPUT_FENCE = "```tool_output"
CALL_ID_PREFIX = "call_"
_ID_ALPHABET = string.ascii_letters + string.digits
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def new_call_id() -> str:
    """An id in OpenAI's form: `call_` and 24 letters and digits."""
    return CALL_ID_PREFIX + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ToolSpec:
    """One declared function, its parameters' schema filled in when the client left it out."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool

    @classmethod
    def from_definition(cls, definition: FunctionDefinition) -> ToolSpec:
        return cls(
            definition.name,
            definition.description,
            definition.parameters if definition.parameters is not None else _EMPTY_PARAMETERS,
            bool(definition.strict),
        )

    def prompt_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name}
        if self.description:
            entry["description"] = self.description
        entry["parameters"] = self.parameters
        return entry

    def call_schema(self) -> dict[str, Any]:
        """The JSON Schema of one call of this function, keys in the order the model writes."""
        return {
            "type": "object",
            "properties": {"name": {"const": self.name}, "parameters": self.parameters},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class ToolPlan:
    """What the request's tools mean for this one generation.

    `choice` is "none", "auto", "required", or the name of the one function to call. `legacy`
    marks a request that used `functions`: its answer is `message.function_call`, one call.
    """

    tools: tuple[ToolSpec, ...]
    choice: str
    parallel: bool
    legacy: bool

    @property
    def offered(self) -> bool:
        """The model is told about the functions and its output is read for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        """The model must call: a required or named choice, enforced by a constraint."""
        return self.offered and self.choice != "auto"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.tools)

    @property
    def max_calls(self) -> int | None:
        """At most one call when parallel calls are off, a function is named, or legacy."""
        several = self.parallel and not self.legacy and self.choice in ("auto", "required")
        return None if several else 1

    def prompt(self) -> str:
        """The instruction and the definitions, as text for the first user turn."""
        lines = [
            "You have access to functions. If you decide to invoke any of the function(s), you "
            "MUST put it in the format of",
            '{"name": function name, "parameters": dictionary of argument name and its value}',
        ]
        if self.max_calls is None:
            lines.append("To call several functions at once, put the calls in a JSON list.")
        lines.append("")
        lines.append("You SHOULD NOT include any other text in the response if you call a function")
        if self.choice == "required":
            lines.append("You MUST call at least one of the functions.")
        elif self.choice not in ("auto", "none"):
            lines.append(f"You MUST call the function {self.choice}.")
        definitions = [tool.prompt_entry() for tool in self.tools]
        lines.append(orjson.dumps(definitions, option=orjson.OPT_INDENT_2).decode())
        return "\n".join(lines)

    def constraint(self) -> dict[str, Any] | None:
        """SGLang's `response_format` for this plan: calls only when the model must call; calls
        held to their schemas once started when a function is strict; else None."""
        if not self.offered:
            return None
        if not self.forced:
            return self._strict_calls() if any(tool.strict for tool in self.tools) else None
        if self.choice != "required":
            (tool,) = (tool for tool in self.tools if tool.name == self.choice)
            schema = tool.call_schema()
        else:
            calls = [tool.call_schema() for tool in self.tools]
            one = calls[0] if len(calls) == 1 else {"anyOf": calls}
            schema = one if self.max_calls == 1 else {"type": "array", "items": one, "minItems": 1}
        return {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": schema, "strict": True},
        }

    def _strict_calls(self) -> dict[str, Any]:
        """Free text, but a call, once its first characters are written, follows its schema
        (both spellings of the call's start: with and without the space after the colons)."""
        structures = []
        for tool in self.tools:
            schema = tool.parameters if tool.strict else {"type": "object"}
            name = orjson.dumps(tool.name).decode()
            for colon, comma in ((": ", ", "), (":", ",")):
                begin = f'{{"name"{colon}{name}{comma}"parameters"{colon}'
                structures.append({"begin": begin, "schema": schema, "end": "}"})
        return {
            "type": "structural_tag",
            "structures": structures,
            "triggers": ['{"name": "', '{"name":"'],
        }


def plan_tools(request: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool plan, or None when it declares no functions; 400s as OpenAI's."""
    if request.tools is not None and request.functions is not None:
        raise InvalidRequest(
            "Use either 'tools' or the deprecated 'functions', not both.", param="functions"
        )
    legacy = request.functions is not None
    if legacy:
        definitions = request.functions or []
        choice = _legacy_choice(request)
    else:
        definitions = [tool.function for tool in request.tools or []]
        choice = _choice(request.tool_choice)
        if request.function_call is not None:
            raise InvalidRequest(
                "'function_call' is only allowed together with 'functions'.",
                param="function_call",
            )
    param = "functions" if legacy else "tools"
    if not definitions:
        if choice not in ("none", "auto"):
            raise InvalidRequest(
                f"Invalid value for '{_choice_param(legacy)}': '{_choice_param(legacy)}' is only "
                f"allowed when '{param}' are specified.",
                param=_choice_param(legacy),
            )
        return None
    specs = tuple(ToolSpec.from_definition(definition) for definition in definitions)
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in seen:
            where = f"{param}[{index}]" + ("" if legacy else ".function") + ".name"
            raise InvalidRequest(
                f"Invalid value for '{where}': the function name '{spec.name}' is declared twice.",
                param=where,
            )
        seen.add(spec.name)
    if choice not in ("none", "auto", "required") and choice not in seen:
        raise InvalidRequest(
            f"Invalid value for '{_choice_param(legacy)}': no function named '{choice}' is "
            f"declared in '{param}'.",
            param=_choice_param(legacy),
        )
    parallel = request.parallel_tool_calls is not False
    return ToolPlan(specs, choice, parallel, legacy)


def _choice(choice: Choice | NamedToolChoice | None) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, NamedToolChoice):
        return choice.function.name
    return choice


def _legacy_choice(request: ChatCompletionRequest) -> str:
    if request.tool_choice is not None:
        raise InvalidRequest(
            "'tool_choice' is only allowed together with 'tools'; with 'functions', use "
            "'function_call'.",
            param="tool_choice",
        )
    call = request.function_call
    if call is None:
        return "auto"
    return call if isinstance(call, str) else call.name


def _choice_param(legacy: bool) -> str:
    return "function_call" if legacy else "tool_choice"


# --- the conversation: calls made and their results, as Gemma turns -----------------------------


def render_calls(calls: list[tuple[str, str]]) -> str:
    """Calls the assistant made (name, arguments JSON), written as the model writes them."""
    rendered = [_render_call(name, arguments) for name, arguments in calls]
    return rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"


def _render_call(name: str, arguments: str) -> str:
    try:
        parameters = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        parameters = arguments  # a client's malformed arguments, kept as a JSON string
    return orjson.dumps({"name": name, "parameters": parameters}).decode()


def render_result(name: str | None, content: str) -> str:
    """A tool's result as user text: the function's name, then the output in a fence."""
    heading = f"Result of {name}:\n" if name else ""
    return f"{heading}{TOOL_OUTPUT_FENCE}\n{content}\n```"
