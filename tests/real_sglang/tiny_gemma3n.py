"""Builds a tiny, randomly initialised Gemma 3n checkpoint that real SGLang serves on a CPU.

This module owns the checkpoint the real-SGLang tier (tests/real_sglang) runs against: the
config (text decoder, MobileNetV5 vision tower, audio conformer, all a few layers wide), random
weights, a tokenizer that keeps Gemma 3n's vocabulary size and special-token ids
(<end_of_turn> 106, <image_soft_token> 262145, <audio_soft_token> 262273), processor configs
(768x768 images, 256 image tokens, 188 audio tokens) and a chat template that behaves like
Gemma 3n's: a leading system message is folded into the first user turn, roles must strictly
alternate user/model ("Conversation roles must alternate ..." otherwise), assistant renders as
`model`. Its words are random: tests check shapes and behaviour, never the text.

It needs torch and transformers, so it runs under the SGLang venv's python, never the
gateway's: `python tiny_gemma3n.py OUT_DIR` (about 10 s on 2 cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB = 262400
SPECIAL = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    5: "[multimodal]",
    105: "<start_of_turn>",
    106: "<end_of_turn>",
    255999: "<start_of_image>",
    256000: "<start_of_audio>",
    262144: "<end_of_image>",
    262145: "<image_soft_token>",
    262272: "<end_of_audio>",
    262273: "<audio_soft_token>",
}
# A few whole words, so that prompts tokenise into fewer pieces than bytes; the rest of the
# vocabulary is filler pieces that decode as " w12345".
_WORD_LIST = (
    "the hello world from tiny gemma model user image audio yes no ok this is a test one two "
    "three four five six seven eight nine ten good bad transcribe say count describe"
)
WORDS = tuple(_WORD_LIST.split())
LAYERS = 6

# Gemma 3n's template (google/gemma-3n-E4B-it, chat_template.jinja), cut to what SGLang renders:
# SGLang turns image and audio parts into {"type": "image"} / {"type": "audio"} items.
CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""


def _vocabulary() -> dict[str, int]:
    vocab = {piece: i for i, piece in SPECIAL.items()}
    vocab |= {f"<unused{i - 6}>": i for i in range(6, 105)}
    next_id = 107
    for byte in range(256):  # byte-fallback pieces: any text tokenises
        vocab[f"<0x{byte:02X}>"] = next_id
        next_id += 1
    pieces = ["\n", "▁"] + [chr(c) for c in range(33, 127)]
    for word in WORDS:
        pieces += ["▁" + word, word]
    for piece in dict.fromkeys(pieces):
        if piece not in vocab:
            vocab[piece] = next_id
            next_id += 1
    used = set(vocab.values())
    vocab |= {f"▁w{i}": i for i in range(VOCAB) if i not in used}
    assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB))
    return vocab


def _tokenizer() -> object:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(
        BPE(vocab=_vocabulary(), merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL.values()]
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        padding_side="left",
        model_max_length=32768,
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "audio_token": "<audio_soft_token>",
            "boa_token": "<start_of_audio>",
            "eoa_token": "<end_of_audio>",
            "start_of_turn": "<start_of_turn>",
            "end_of_turn": "<end_of_turn>",
        },
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def _model() -> object:
    import torch
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    config = Gemma3nConfig(
        text_config={
            "vocab_size": VOCAB,
            "vocab_size_per_layer_input": 262144,
            "hidden_size": 128,
            "hidden_size_per_layer_input": 16,
            "intermediate_size": [256] * LAYERS,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
            "num_kv_shared_layers": 3,
            "sliding_window": 512,
            "max_position_embeddings": 32768,
            "laurel_rank": 8,
            "altup_num_inputs": 4,
            "activation_sparsity_pattern": [0.95, 0.95] + [0.0] * (LAYERS - 2),
            "final_logit_softcapping": 30.0,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
        },
        vision_config={
            "architecture": "mobilenetv5_300m_enc",
            "hidden_size": 2048,
            "model_args": {"channel_multiplier": 0.25},
            "do_pooling": False,
        },
        audio_config={
            "hidden_size": 64,
            "conf_num_hidden_layers": 2,
            "conf_num_attention_heads": 2,
            "sscp_conv_channel_size": [32, 16],
            "input_feat_size": 128,
        },
    )
    config.text_config.dtype = "bfloat16"
    config.architectures = ["Gemma3nForConditionalGeneration"]
    config.eos_token_id = [1, 106]
    model = Gemma3nForConditionalGeneration(config).to(torch.bfloat16).eval()
    # nn.Embedding(padding_idx=0) leaves the <pad> row at exactly zero. SGLang's Gemma 3n altup
    # normalisation divides by a token's embedding magnitude with eps=finfo.min (HF uses 1e-5),
    # so a zero row gives 0/0 = NaN, which then poisons the radix cache. Give those rows values.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_tokens" in name and param.dim() == 2:
                zero = param.abs().sum(-1) == 0
                param[zero] = (torch.randn(int(zero.sum()), param.shape[1]) * 0.02).to(param.dtype)
    return model


def build(out: Path) -> Path:
    """Write the checkpoint into `out` (created if missing) and return it."""
    import torch
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor, GenerationConfig
    from transformers.models.siglip import SiglipImageProcessor

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    _model().save_pretrained(out)  # type: ignore[attr-defined]
    # Stop on <eos> and <end_of_turn>, sample like the real checkpoint's generation config.
    GenerationConfig(
        bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, do_sample=True, top_k=64, top_p=0.95
    ).save_pretrained(out)
    # do_normalize=True (black -> -1): with random bias-free MobileNet weights an all-black image
    # (SGLang's own warm-up PNG is 32x32 all-zero) would give all-zero soft tokens, which SGLang's
    # Gemma 3n altup code turns into NaN (0/0); the NaN KV then poisons the radix cache.
    image_processor = SiglipImageProcessor(
        size={"height": 768, "width": 768},
        resample=2,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_rescale=True,
        rescale_factor=1 / 255,
    )
    processor = Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(),
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        audio_seq_length=188,
        image_seq_length=256,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    (out / "tiny_gemma3n.json").write_text(json.dumps({"layers": LAYERS, "vocab": VOCAB}))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: tiny_gemma3n.py OUT_DIR", file=sys.stderr)
        return 2
    out = build(Path(argv[1]))
    print(f"tiny Gemma 3n written to {out}: {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
