"""The gateway's library: everything `app.py` and `model_handler.py` assemble into the service.

The subpackages are layered; each imports only from the ones listed before it (and from
`errors` and `settings`, the foundation every layer uses), never from a later one, so there
are no cycles and a folder can be read without the ones above it:

- `errors`, `settings`: the exception tree with OpenAI's error body; the one typed `Settings`.
- `server`: the process and its protections (keys, limits, request ids, metrics, workers).
- `sglang`: talking to SGLang (HTTP client, translation to OpenAI's shapes, streams, health).
- `media`: client images and audio, fetched under guards, decoded, checked and re-encoded.
- `speech`: speech to text (Whisper, Gemma 3n by clips) and the transcription formats.
- `api`: OpenAI's wire format: request models, validation, the OpenAPI document, the SSE response.
- `chat`: a chat request made ready for Gemma 3n: its conversation fitted, its media prepared,
  its tools rendered and its output read for calls.
- `responses`: the Responses API on the chat pipeline, with its store of responses.
"""
