"""OpenAI's Responses API (`/v1/responses`) on top of the chat pipeline.

A Responses request is translated into a chat completion request (`convert`), run by the same
handler as `/v1/chat/completions` (validation, conversation fitting, media, tools, SGLang), and
its answer translated back into a `response` object (`convert`) or the Responses stream of
typed events (`events`). `store` keeps responses, their input items and the conversation so far
(media as prepared, never fetched again) for `GET`/`DELETE`, `input_items` and
`previous_response_id`: SQLite by default, behind a small interface. `service` ties them
together; `schemas` holds the request models.
"""
