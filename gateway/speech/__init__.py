"""Speech to text: `/v1/audio/transcriptions` and `/v1/audio/translations` behind the routes.

`transcription` owns the service (form fields, routing by model, Gemma 3n by 30 s clips);
`whisper_asr` runs local openai-whisper (an optional install) off the event loop; `formats`
writes a transcript as json, text, srt, vtt or verbose_json. Audio decoding is `gateway.media`'s.
"""
