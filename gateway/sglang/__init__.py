"""Talking to SGLang: the only code that knows SGLang's HTTP behaviour and its quirks.

`upstream` is the pooled HTTP/1.1 client; `translate` turns SGLang's bodies, chunks and errors
into OpenAI's (../shared/SGLANG.md lists the differences); `chat_stream` relays one SGLang stream
as OpenAI's server-sent events; `health` keeps what the gateway knows of SGLang's readiness and
capabilities fresh. Nothing here knows FastAPI or the OpenAI request models.
"""
