"""OpenAI request models for what the gateway accepts, in the order of OpenAI's API reference.

The models validate a client's request: types, ranges and required fields, strictly (a string is
not a number). Fields OpenAI defines that Gemma 3n cannot honour are accepted here and decided on
in `model_handler.py`; unknown fields are ignored and never forwarded. Responses are not modelled
as classes: the gateway rewrites SGLang's JSON in place (see `sglang/translate.py`) rather than pay
for a pydantic round trip per streamed chunk.

Reference: https://platform.openai.com/docs/api-reference/chat/create
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Content part types a client may send, with the field that carries each one's payload.
CONTENT_PART_FIELDS: dict[str, str] = {
    "text": "text",
    "image_url": "image_url",
    "input_audio": "input_audio",
    "audio_url": "audio_url",  # SGLang's and vLLM's extension, widely sent by clients
    "file": "file",
    "refusal": "refusal",  # assistant history only
    "video_url": "video_url",  # SGLang's extension; Gemma 3n drops video
}


# JSON allows integers of any size; SGLang (and the orjson that serialises the upstream body) take
# 64-bit ones. Anything larger is the client's mistake, so a 400 rather than a failure later.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class _Model(BaseModel):
    """Strict JSON validation (no "1" for 1), unknown keys ignored, no NaN or infinity."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class ImageURL(_Model):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Model):
    data: str
    format: str


class AudioURL(_Model):
    url: str


class FileData(_Model):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class VideoURL(_Model):
    url: str


class ContentPart(_Model):
    """One part of a message's content; `type` says which of the other fields carries it.

    A single class rather than a tagged union so that a validation error names the field a client
    wrote (`messages[0].content[1].image_url.url`) instead of an internal union tag.
    """

    type: str
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None
    audio_url: AudioURL | None = None
    file: FileData | None = None
    refusal: str | None = None
    video_url: VideoURL | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> ContentPart:
        field = CONTENT_PART_FIELDS.get(self.type)
        if field is None:
            known = ", ".join(f"'{name}'" for name in CONTENT_PART_FIELDS)
            raise ValueError(f"unknown content part type '{self.type}'; expected one of {known}")
        if getattr(self, field) is None:
            raise ValueError(f"a '{self.type}' content part needs a '{field}' field")
        return self


# OpenAI's rule for function names: letters, digits, underscores and dashes, at most 64.
FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class FunctionCall(_Model):
    """A call the model made: the function's name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(_Model):
    """An entry of an assistant message's `tool_calls`."""

    id: str = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Model):
    """A message of any role; what each role may carry is checked in `conversation.py`."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # legacy: an assistant's call of `functions`


class FunctionDefinition(_Model):
    """A function the model may call; `parameters` is a JSON Schema of an object."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _an_object_schema(cls, value: dict[str, Any] | None) -> Any:
        if value is not None and value.get("type", "object") != "object":
            raise ValueError("a function's parameters must be a JSON Schema of type 'object'")
        return value


class Tool(_Model):
    """An entry of `tools`; Gemma 3n on this gateway calls functions only."""

    type: Literal["function"]
    function: FunctionDefinition


class FunctionReference(_Model):
    """A function named by `tool_choice` or the legacy `function_call`."""

    name: str


class NamedToolChoice(_Model):
    """`tool_choice` naming the one function the model must call."""

    type: Literal["function"]
    function: FunctionReference


class JSONSchemaFormat(_Model):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object")
        return self


class StreamOptions(_Model):
    include_usage: bool | None = None


class ChatCompletionRequest(_Model):
    """`POST /v1/chat/completions`: OpenAI's fields, then the safe SGLang sampling extras."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=2**63 - 1)
    max_tokens: int | None = Field(None, ge=1, le=2**63 - 1)
    n: int | None = Field(None, ge=1, le=128)
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    seed: Int64 | None = None
    stop: str | Annotated[list[str], Field(max_length=64)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    user: str | None = None
    # Deprecated by OpenAI in favour of tools/tool_choice, still sent by older clients.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionReference | None = None
    # Output modalities and audio output: Gemma 3n on this gateway writes text only.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    # SGLang sampling extras: they change only how tokens are picked, never what is read or run.
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(None, ge=0, le=2**31 - 1)
    regex: str | None = None
    ebnf: str | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None

    # The same cross-field rules OpenAI applies, so a request that works here works there. They
    # are field validators (run in declaration order) so that the error names the field.
    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' requires 'logprobs' to be true")
        return value
