"""A chat request made ready for Gemma 3n, before `model_handler.py` sends it to SGLang.

`conversation` fits an OpenAI conversation to Gemma 3n's chat template (roles, alternation,
system text) and lists its media parts; `media` prepares those parts in place (images
re-encoded, audio cut into clips or transcribed) with the `gateway.media` and `gateway.speech`
building blocks.
"""
