"""The process and its protections: what stands between the network and the routes.

The front door (`guards`: API keys, per-key rate, requests in flight, body size and time),
limits on request heads for uvicorn's httptools protocol (`http_limits`), per-request identity
and the access line (`request_context`), Prometheus metrics (`metrics`), several processes on
one port (`workers`) and what every helper process runs first (`child_process`). Nothing here
knows SGLang, media or the OpenAI request models.
"""
