"""The Responses API's request models: `POST /v1/responses` as the gateway accepts it.

Strict JSON as for chat (`gateway.api.schemas`); unknown fields are ignored. Fields of OpenAI's
that need what Gemma 3n on this gateway does not have (hosted tools, background runs, the
Conversations API, prompt templates, reasoning summaries) are read so that asking for them is a
clear 400 rather than silently nothing; see `service.refuse_unsupported`.

Reference: https://platform.openai.com/docs/api-reference/responses/create
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.schemas import FunctionName, Int64


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class InputContent(_Model):
    """A content part of an input message (`input_*`) or of assistant history (`output_text`,
    `refusal`); one class so that errors name the field a client wrote."""

    type: Literal[
        "input_text", "input_image", "input_file", "input_audio", "output_text", "refusal"
    ]
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None
    input_audio: dict[str, Any] | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _payload_present(self) -> InputContent:
        needed = {
            "input_text": ("text",),
            "output_text": ("text",),
            "refusal": ("refusal",),
            "input_image": ("image_url", "file_id"),
            "input_file": ("file_data", "file_id", "file_url"),
            "input_audio": ("input_audio",),
        }[self.type]
        if all(getattr(self, name) is None for name in needed):
            choices = "' or '".join(needed)
            raise ValueError(f"a '{self.type}' part needs '{choices}'")
        return self


class InputItem(_Model):
    """One item of `input`: a message, a function call, or a function call's output."""

    type: Literal["message", "function_call", "function_call_output", "item_reference"] = "message"
    id: str | None = None
    # message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputContent] | None = None
    # function_call / function_call_output
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContent] | None = None
    status: str | None = None

    @model_validator(mode="after")
    def _fields_for_type(self) -> InputItem:
        required = {
            "message": ("role", "content"),
            "function_call": ("call_id", "name", "arguments"),
            "function_call_output": ("call_id", "output"),
            "item_reference": ("id",),
        }[self.type]
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a '{self.type}' item needs '{missing[0]}'")
        return self


class FunctionTool(_Model):
    """A function the model may call (the Responses API's flat form of a chat tool)."""

    type: str  # "function" is served; hosted tools (web_search, ...) are refused by type
    name: FunctionName | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(_Model):
    type: str
    name: str | None = None


class TextFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or self.name is None):
            raise ValueError("a 'json_schema' format needs 'name' and 'schema'")
        return self


class TextConfig(_Model):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


MetadataValue = Annotated[str, Field(max_length=512)]


class ResponsesRequest(_Model):
    """`POST /v1/responses`."""

    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(min_length=1)] | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=2**63 - 1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], MetadataValue] | None = Field(
        None, max_length=16
    )
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    seed: Int64 | None = None  # not OpenAI's; SGLang's, kept for reproducible tests
    # Read only to be refused (service.refuse_unsupported).
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    top_logprobs: int | None = None
    reasoning: dict[str, Any] | None = None
