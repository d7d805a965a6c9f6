"""A chat request made ready for Gemma 3n, before `model_handler.py` sends it to SGLang.

`conversation` fits an OpenAI conversation to Gemma 3n's chat template (roles, alternation,
system text, tool calls and results) and lists its media parts; `media` prepares those parts in
place (images re-encoded, audio cut into clips or transcribed) with the `gateway.media` and
`gateway.speech` building blocks. `tools` turns a request's functions into Gemma's
function-calling prompt and SGLang's decoding constraint; `tool_parser` reads the model's text
for calls, whole or streamed; `tool_output` writes them as OpenAI's `tool_calls`.
"""
