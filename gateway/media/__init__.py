"""Client media in: every image and audio a client sends, made safe and small for SGLang.

`fetch` is the only way the gateway downloads a client's URL (SSRF guards, size and time
limits); `images` sniffs, bounds, decodes and re-encodes images as JPEG `data:` URLs; `audio`
decodes any accepted format to 16 kHz mono, bounds it, and cuts and encodes clips; `memory`
holds decoded media to a per-request and a process-wide budget. Each works on
bytes and URLs, not on requests: what a part of a conversation becomes is `gateway.chat`'s.
"""
