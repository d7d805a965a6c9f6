"""The browser playground: one page, served by the gateway itself, to talk to Gemma 3n.

Owns the page's static files (`static/`: index.html, ES modules, one stylesheet; no build step,
no CDN, nothing fetched from anywhere but the gateway) and `assets.Playground`, which reads them
once at start-up and serves them at `/`, `/playground` and `/playground/static/<name>` with a
Content-Security-Policy that allows only the gateway's own origin. The page talks to the
gateway's public OpenAI API like any other client, so nothing here knows SGLang, media or the
request models; it imports nothing of ours. `PLAYGROUND=false` leaves it out of the app.
"""
