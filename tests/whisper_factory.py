"""A tiny, randomly initialised Whisper checkpoint, built with the `whisper` package's own classes.

Owns what the Whisper tests (and the transcription tests) need to run the real Whisper code on
the CPU in seconds without downloading anything: the checkpoint is saved with torch in the
format `whisper.load_model` reads, so the gateway loads it through its normal loading code. Its
transcripts are noise; their structure (segments, timestamps, languages) is real.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path


def build_tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    multilingual: bool = True,
    text_layers: int = 1,
    text_heads: int = 2,
) -> Path:
    """Write a ~14 MB Whisper checkpoint (width 64, one layer by default) to `path`.

    `text_layers`/`text_heads` 4/6 give the decoder the shape of OpenAI's "tiny", whose
    alignment-head table whisper.load_model applies when a checkpoint is loaded by that name.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    width = 64 if text_heads == 2 else 8 * text_heads  # cross-attention: audio width = text width
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,  # fixed by Whisper's 30 s window (3000 mel frames, conv stride 2)
        n_audio_state=width,
        n_audio_head=2,
        n_audio_layer=1,
        # the vocabulary sizes the real tokenizers expect: 51865 multilingual, 51864 English-only
        n_vocab=51865 if multilingual else 51864,
        # 64, not 448: Whisper samples at most n_text_ctx // 2 tokens per 30 s window, and a
        # random model never stops early, so this keeps a window to 32 decoding steps.
        n_text_ctx=64,
        n_text_state=width,
        n_text_head=text_heads,
        n_text_layer=text_layers,
    )
    warm_whisper_tokenizers()  # whoever builds a checkpoint is about to transcribe
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        # Whisper leaves this one torch.empty (a real checkpoint overwrites it); uninitialised
        # memory can hold NaN, which would make every logit NaN.
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def warm_whisper_tokenizers() -> None:
    """Build Whisper's cached tokenizer encodings once, hiding the file whisper leaves open.

    whisper.tokenizer.get_encoding reads its vocabulary with an unclosed `open()`; the
    ResourceWarning that follows would fail a suite run with `filterwarnings = error`. The
    encodings are cached, so after this call the warning never comes again.
    """
    from whisper.tokenizer import get_encoding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        # The exact call get_tokenizer makes: lru_cache keys on how the arguments are passed.
        for name in ("multilingual", "gpt2"):
            get_encoding(name=name, num_languages=99)
