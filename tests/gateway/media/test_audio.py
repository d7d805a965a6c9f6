"""Tests of audio.py: decoding every accepted format, the limits, splitting and WAV clips.

All audio is made here (tests/audio_factory.py) and encoded with real encoders; espeak-ng speech
is used when the program is installed (always in CI).
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
import wave

import anyio
import audio_factory as factory
import av
import numpy as np
import pytest

from gateway import errors
from gateway.media import audio
from gateway.settings import Settings

PARAM = "messages[0].content[1].input_audio"
SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]
needs_espeak = pytest.mark.skipif(
    not factory.espeak_available() and os.environ.get("CI") != "true",
    reason="espeak-ng is not installed (it is in CI)",
)


def decode(data: bytes, fmt: str | None = None, **overrides: object) -> audio.DecodedAudio:
    settings = Settings(_env_file=None, **overrides) if overrides else SETTINGS  # type: ignore[call-arg]
    return audio.decode_audio_sync(data, declared_format=fmt, param=PARAM, settings=settings)


def rejected(data: bytes, fmt: str | None = None, **overrides: object) -> errors.InvalidRequest:
    with pytest.raises(errors.InvalidRequest) as caught:
        decode(data, fmt, **overrides)
    assert caught.value.status_code == 400
    assert caught.value.param == PARAM
    return caught.value


def dominant_frequency(samples: np.ndarray, rate: int = audio.SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def read_wav_data_url(url: str) -> tuple[wave._wave_params, np.ndarray]:
    prefix = "data:audio/wav;base64,"
    assert url.startswith(prefix)
    with wave.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True))) as wav:
        params = wav.getparams()
        pcm = np.frombuffer(wav.readframes(params.nframes), "<i2")
    return params, pcm.astype(np.float32) / 32767.0


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(factory.ENCODINGS))
def test_every_format_decodes_to_16k_mono(fmt: str) -> None:
    # A stereo 44.1 kHz recording whose channels differ, as phones and browsers send.
    left = factory.tone(2.0, freq=440.0, rate=44_100, amp=0.6)
    decoded = decode(factory.encode(np.stack([left, 0.5 * left]), fmt, rate=44_100), fmt)

    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert not decoded.samples.flags.writeable
    assert decoded.duration == len(decoded.samples) / 16_000
    # Lossy codecs add priming/padding of a few tens of milliseconds at most.
    assert decoded.duration == pytest.approx(2.0, abs=0.05)
    middle = decoded.samples[4_000:28_000]
    assert dominant_frequency(middle) == pytest.approx(440.0, abs=2.0)
    # Down-mixed by averaging: amplitude (0.6 + 0.3) / 2, so RMS 0.45 / sqrt(2).
    assert rms(middle) == pytest.approx(0.45 / np.sqrt(2), rel=0.05)


@pytest.mark.parametrize("fmt", sorted(factory.PCM_VARIANTS))
def test_every_pcm_sample_type_is_scaled_to_full_scale(fmt: str) -> None:
    decoded = decode(factory.encode(factory.tone(1.0, rate=48_000, amp=0.5), fmt, rate=48_000))
    assert decoded.duration == pytest.approx(1.0, abs=1e-3)
    assert float(np.abs(decoded.samples).max()) == pytest.approx(0.5, abs=0.01)
    assert rms(decoded.samples[1000:-1000]) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 96_000])
def test_any_rate_is_resampled_to_16k(rate: int) -> None:
    decoded = decode(factory.encode(factory.tone(1.5, freq=1_000.0, rate=rate), "flac", rate=rate))
    assert decoded.duration == pytest.approx(1.5, abs=1e-3)
    assert dominant_frequency(decoded.samples) == pytest.approx(1_000.0, abs=2.0)
    assert rms(decoded.samples[800:-800]) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resampler_removes_what_16k_cannot_hold() -> None:
    # 12 kHz is above the 8 kHz Nyquist limit of 16 kHz audio: a proper (band-limited)
    # resampler removes it, a naive one folds it back in as a 4 kHz tone.
    high = factory.tone(1.0, freq=12_000.0, rate=48_000, amp=0.5)
    decoded = decode(factory.encode(high, "wav", rate=48_000))
    assert rms(decoded.samples[800:-800]) < 0.005


def test_declared_format_is_not_trusted() -> None:
    clip = factory.tone(1.0)
    assert decode(factory.encode(clip, "wav"), "mp3").container == "wav"
    assert decode(factory.encode(clip, "webm"), "wav").container == "matroska"
    assert decode(factory.encode(clip, "m4a"), "ogg").container == "mov"
    assert decode(factory.encode(clip, "opus"), "webm").container == "ogg"


@pytest.mark.parametrize("declared", ["WAV", "audio/mpeg", "x-m4a", "aif", " opus "])
def test_declared_aliases_and_mime_types_are_accepted(declared: str) -> None:
    assert decode(factory.encode(factory.tone(0.5), "wav"), declared).duration == 0.5


def test_streamed_webm_without_a_duration_is_accepted() -> None:
    # MediaRecorder cannot seek back to write the duration; the file is still whole.
    data = factory.encode(factory.noise(4.0, rate=48_000), "webm", rate=48_000, streamed=True)
    decoded = decode(data, "webm")
    assert decoded.duration == pytest.approx(4.0, abs=0.03)


def test_silence_is_allowed() -> None:
    decoded = decode(factory.encode(factory.silence(1.0, rate=48_000), "webm", rate=48_000))
    assert decoded.duration == pytest.approx(1.0, abs=0.03)
    assert float(np.abs(decoded.samples).max()) < 1e-3


def test_glued_mp3s_with_a_new_rate_mid_stream_decode_whole() -> None:
    first = factory.encode(factory.tone(2.0, rate=44_100), "mp3", rate=44_100)
    second = factory.encode(factory.tone(1.0, freq=300.0, rate=22_050), "mp3", rate=22_050)
    decoded = decode(first + second)
    assert decoded.duration == pytest.approx(3.0, abs=0.1)
    assert dominant_frequency(decoded.samples[-12_000:-2_000]) == pytest.approx(300.0, abs=3.0)


@needs_espeak
@pytest.mark.parametrize("fmt", ["mp3", "webm", "m4a", "opus", "flac"])
def test_speech_survives_every_codec(fmt: str) -> None:
    speech = decode(factory.speech_wav("The quick brown fox jumps over the lazy dog."))
    assert 1.5 < speech.duration < 6.0
    decoded = decode(factory.encode(speech.samples, fmt))
    # FFmpeg's AAC encoder leaves its 1024-sample priming in (64 ms at 16 kHz) plus padding.
    slack = 0.15 if fmt == "m4a" else 0.05
    assert decoded.duration == pytest.approx(speech.duration, abs=slack)
    assert rms(decoded.samples) == pytest.approx(rms(speech.samples), rel=0.1)


# --- bad audio ---------------------------------------------------------------------------------


def test_zero_bytes_are_rejected() -> None:
    error = rejected(b"", "wav")
    assert error.code == "invalid_audio"
    assert "empty" in error.message


def test_zero_length_audio_is_rejected() -> None:
    error = rejected(audio.clip_to_wav_bytes(np.zeros(0, np.float32)))  # a header, no samples
    assert error.code == "invalid_audio"
    assert "zero length" in error.message


def test_garbage_is_rejected() -> None:
    error = rejected(np.random.default_rng(0).bytes(20_000), "mp3")
    assert error.code == "invalid_audio"
    assert "no supported format" in error.message


@pytest.mark.parametrize(
    "magic",
    [
        b"RIFF\x10\x00\x00\x00WAVE",
        b"OggS",
        b"\x1a\x45\xdf\xa3",
        b"\x00\x00\x00\x18ftypM4A ",
        b"fLaC",
        b"FORM\x00\x00\x00\x10AIFF",
        b"ID3\x03\x00\x00\x00\x00\x00\x00",
        b"\xff\xfb\x90\x00",
        b"\xff\xf1\x50\x80",
    ],
)
def test_right_magic_with_garbage_after_it_is_rejected(magic: bytes) -> None:
    error = rejected(magic + np.random.default_rng(1).bytes(5_000))
    assert error.code == "invalid_audio"
    assert "could not be decoded" in error.message


@pytest.mark.parametrize("fmt", ["wav", "flac", "m4a", "webm", "aiff", "ogg"])
def test_truncated_files_are_rejected(fmt: str) -> None:
    whole = factory.encode(factory.tone(3.0, rate=44_100), fmt, rate=44_100)
    error = rejected(whole[: len(whole) // 2], fmt)
    assert error.code == "invalid_audio"
    assert "truncated" in error.message or "could not be decoded" in error.message


def test_a_file_without_an_audio_track_is_rejected() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for pts in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    error = rejected(buffer.getvalue(), "mp4")
    assert "no audio track" in error.message


def test_an_unknown_declared_format_is_rejected() -> None:
    error = rejected(factory.encode(factory.tone(0.5), "wav"), "pcm16")
    assert error.code == "unsupported_audio_format"


def test_parts_over_the_byte_limit_are_rejected_before_decoding() -> None:
    data = factory.encode(factory.tone(1.0), "wav")
    error = rejected(data, "wav", max_audio_bytes=len(data) - 1)
    assert error.code == "audio_too_large"
    assert str(len(data)) in error.message


def test_audio_over_the_time_limit_is_rejected() -> None:
    error = rejected(factory.encode(factory.tone(3.0), "mp3"), max_audio_seconds=2.0)
    assert error.code == "audio_too_long"
    assert "2 s" in error.message


def test_a_smaller_remaining_budget_is_applied_and_explained() -> None:
    data = factory.encode(factory.tone(3.0), "wav")
    with pytest.raises(errors.InvalidRequest) as caught:
        audio.decode_audio_sync(
            data, declared_format="wav", param=PARAM, settings=SETTINGS, max_seconds=2.5
        )
    assert caught.value.code == "audio_too_long"
    assert "may total 600 s" in caught.value.message


def test_ten_hours_in_a_small_file_stop_decoding_at_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 10 s of 8 kb/s MP3 silence repeated: 10 hours in 37 MB. Decoding stops at the limit.
    low = factory.Encoding("mp3", "libmp3lame", 8_000, (("b", "8k"),))
    monkeypatch.setitem(factory.PCM_VARIANTS, "mp3-8k", low)
    ten_seconds = factory.encode(factory.silence(10.0, rate=8_000), "mp3-8k", rate=8_000)
    decoded_seconds = 0.0
    original_add = audio._To16kMono.add

    def counting_add(self: audio._To16kMono, frame: av.AudioFrame) -> None:
        nonlocal decoded_seconds
        decoded_seconds += frame.samples / frame.sample_rate
        original_add(self, frame)

    monkeypatch.setattr(audio._To16kMono, "add", counting_add)
    error = rejected(ten_seconds * 3_600, max_audio_bytes=100_000_000, max_audio_seconds=60.0)
    assert error.code == "audio_too_long"
    assert 59.0 < decoded_seconds <= 60.0


def test_truncated_wav_header_is_checked_by_the_gateway() -> None:
    whole = factory.encode(factory.tone(1.0), "wav")
    error = rejected(whole[:-100], "wav")
    assert "100 more bytes" in error.message


def test_streamed_wav_with_unknown_length_is_accepted() -> None:
    whole = bytearray(factory.encode(factory.tone(1.0), "wav"))
    data_at = whole.index(b"data")
    whole[data_at + 4 : data_at + 8] = b"\xff\xff\xff\xff"  # what a recorder writes to a pipe
    assert decode(bytes(whole)).duration == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"ID3\x04\x00\x00\x00\x00\x00\x02\x00\x00fLaC", "flac"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x02\x00\x00\xff\xf1\x50\x80", "aac"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x00", "mp3"),
        (b"\xff\xf9\x50\x80", "aac"),
        (b"RF64\xff\xff\xff\xffWAVE", "wav"),
        (b"FORM\x00\x00\x00\x10AIFC", "aiff"),
        (b"\x00\x00\x00\x08wide\x00\x00", "mov"),
        (b"#EXTM3U\nfile:///etc/passwd\n", None),
        (b"\xff\xff\xff\xff", None),
        (b"", None),
    ],
)
def test_sniffing(head: bytes, expected: str | None) -> None:
    assert audio.sniff_container(head) == expected


# --- the decoder's thread pool -----------------------------------------------------------------


@pytest.mark.anyio
async def test_decoder_runs_off_the_loop_within_its_worker_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = peak = 0
    lock = threading.Lock()
    real = audio.decode_audio_sync
    loop_thread = threading.get_ident()

    def slow(data: bytes, **kwargs: object) -> audio.DecodedAudio:
        nonlocal running, peak
        assert threading.get_ident() != loop_thread
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return real(data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audio, "decode_audio_sync", slow)
    decoder = audio.AudioDecoder(Settings(_env_file=None, audio_workers=2))  # type: ignore[call-arg]
    data = factory.encode(factory.tone(0.5), "mp3")
    results: list[audio.DecodedAudio] = []

    async def one() -> None:
        results.append(await decoder.decode(data, declared_format="mp3", param=PARAM))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(one)
    assert peak == 2
    assert [r.duration for r in results] == [results[0].duration] * 5


@pytest.mark.anyio
async def test_decoder_errors_reach_the_caller() -> None:
    decoder = audio.AudioDecoder(SETTINGS)
    with pytest.raises(errors.InvalidRequest) as caught:
        await decoder.decode(b"nonsense", declared_format=None, param=PARAM)
    assert caught.value.param == PARAM
    clips = await decoder.run(audio.split_into_clips, factory.tone(31.0))
    assert len(clips) == 2
    assert len(clips[0]) <= 30 * 16_000


# --- splitting ---------------------------------------------------------------------------------


def test_cuts_land_in_the_silences_near_each_boundary() -> None:
    # Gaps the splitter must find (27.0, 55.5, 84.0) and decoys outside every search window.
    gaps = [27.0, 55.5, 84.0]
    samples = factory.tone_with_gaps(95.0, [10.0, 40.0, *gaps])
    clips = audio.split_into_clips(samples)

    assert len(clips) == 4
    assert all(len(c) <= 30 * 16_000 for c in clips)
    assert np.array_equal(np.concatenate(clips), samples)
    assert all(np.shares_memory(c, samples) for c in clips)
    cuts = np.cumsum([len(c) for c in clips])[:-1] / 16_000
    for cut, gap in zip(cuts, gaps, strict=True):
        assert abs(cut - gap) < 0.1  # inside the 0.3 s gap, clear of the tone on either side


def test_without_quiet_points_clips_are_still_at_most_30_s() -> None:
    samples = factory.noise(65.0)
    clips = audio.split_into_clips(samples)
    assert len(clips) == 3
    assert all(25 * 16_000 <= len(c) <= 30 * 16_000 for c in clips[:-1])
    assert np.array_equal(np.concatenate(clips), samples)


@pytest.mark.parametrize("seconds", [0.001, 10.0, 30.0])
def test_audio_up_to_30_s_is_one_clip(seconds: float) -> None:
    samples = factory.tone(seconds)
    clips = audio.split_into_clips(samples)
    assert len(clips) == 1
    assert clips[0] is samples or np.array_equal(clips[0], samples)


def test_split_options_are_checked() -> None:
    with pytest.raises(ValueError, match="search_seconds"):
        audio.split_into_clips(factory.tone(40.0), search_seconds=30.0)
    clips = audio.split_into_clips(factory.tone(40.0), max_seconds=10.0, search_seconds=2.0)
    assert len(clips) in (4, 5)
    assert all(8 * 16_000 <= len(c) <= 10 * 16_000 for c in clips[:-1])


@pytest.mark.parametrize("fmt", ["webm", "m4a", "mp3"])
def test_long_recording_becomes_wav_clips_for_sglang(fmt: str) -> None:
    """The whole native path: compressed 70 s -> 16 kHz mono -> clips -> WAV data: URLs."""
    source = factory.tone_with_gaps(70.0, [28.0, 57.0], rate=48_000)
    decoded = decode(factory.encode(source, fmt, rate=48_000), fmt)
    urls = [audio.clip_to_wav_data_url(c) for c in audio.split_into_clips(decoded.samples)]

    assert len(urls) == 3
    total = 0
    for url in urls:
        params, pcm = read_wav_data_url(url)
        assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 16_000)
        assert 0 < params.nframes <= 30 * 16_000
        total += params.nframes
        # Each cut sits in a gap: the clip neither starts nor ends inside the tone.
        if len(urls) > 1:
            assert rms(pcm[:80]) < 0.05 or url is urls[0]
            assert rms(pcm[-80:]) < 0.05 or url is urls[-1]
    assert total == len(decoded.samples)
    assert total / 16_000 == pytest.approx(70.0, abs=0.05)


@needs_espeak
def test_speech_is_cut_between_words() -> None:
    sentence = "Please write this down. The meeting moves to Thursday at nine, room four."
    speech = decode(factory.speech_wav(sentence)).samples
    pause = np.zeros(int(0.4 * 16_000), np.float32)
    long_speech = np.concatenate([np.concatenate([speech, pause])] * 20)
    assert len(long_speech) > 70 * 16_000
    clips = audio.split_into_clips(long_speech)

    assert all(len(c) <= 30 * 16_000 for c in clips)
    assert np.array_equal(np.concatenate(clips), long_speech)
    level = rms(long_speech)
    for cut in np.cumsum([len(c) for c in clips])[:-1]:
        around = long_speech[cut - 320 : cut + 320]  # 20 ms either side
        assert rms(around) < 0.05 * level


# --- WAV clips ---------------------------------------------------------------------------------


def test_wav_data_url_round_trips_and_clips_overs() -> None:
    clip = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, np.nan], dtype=np.float32)
    params, pcm = read_wav_data_url(audio.clip_to_wav_data_url(clip))
    assert (params.nchannels, params.sampwidth, params.framerate, params.nframes) == (
        1,
        2,
        16_000,
        8,
    )
    expected = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.0, -1.0, 0.0], dtype=np.float32)
    assert np.allclose(pcm, expected, atol=1 / 32767)


def test_wav_clip_decodes_back_through_the_decoder() -> None:
    clip = factory.tone(2.5, freq=700.0)
    decoded = decode(audio.clip_to_wav_bytes(clip), "wav")
    assert decoded.duration == 2.5
    assert np.allclose(decoded.samples, clip, atol=2 / 32767)
