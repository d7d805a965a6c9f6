"""OpenAI's wire format: what a request may say, how its errors are worded, how streams go out.

`schemas` holds the request models, in the order of OpenAI's reference; `validation` parses a
body into one and words pydantic's errors as OpenAI's 400s with a `param`; `json_worker` says
where a body is parsed (the loop, a thread, or a worker process for large ones); `openapi`
builds the document `/openapi.json` serves; `streaming` is the server-sent-events response.
Routes live in `app.py`; serving logic in `model_handler.py` and `gateway.chat`.
"""
