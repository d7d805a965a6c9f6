"""The source patches the CPU SGLang venv needs to serve Gemma 3n; this module owns them.

Run with the SGLang venv's python (scripts/install-real-sglang.sh does, after installing the
wheels): `python patch_sglang.py` applies each patch exactly once and is idempotent (a patched
file is recognised and left alone); `python patch_sglang.py --check` only verifies that every
patch is in place. Either way a file that matches neither the original nor the patched text
(another SGLang version) fails loudly, naming the file, instead of half-patching it.

1. `srt/configs/update_config.py` pads `intermediate_size` for CPU tensor parallelism and assumes
   it is an int; Gemma 3n's is a per-layer list (`TypeError: unsupported operand type(s) for %:
   'list' and 'int'` at start-up).
2. `srt/layers/attention/torch_native_backend.py`: `forward_extend` keeps q as the model passes
   it; Gemma 3n passes [tokens, heads, head_dim], so the output is 3-D and o_proj fails on the
   first prefill. `forward_decode` already flattens q; extend now does the same.
3. torchvision 0.28.0 (timm, hence Gemma 3n's MobileNetV5 tower, imports it) is PyPI's CUDA
   build: its compiled ops need libtorch_cuda.so, absent beside the local CPU torch, so they do
   not load, and `torchvision/_meta_registrations.py` then fails at import with `RuntimeError:
   operator torchvision::nms does not exist` (its other registrations already check
   `extension._has_ops()`; nms and qnms do not). They now check too. Gemma 3n uses none of
   torchvision's compiled ops.
4. torchaudio 2.11.0 (SGLang's `load_audio` imports it, for resampling only) is also PyPI's CUDA
   build: `torchaudio/_extension/__init__.py` raises `OSError: Could not load this library:
   .../_torchaudio.abi3.so` (libc10_cuda.so is missing) at import, so every audio request was a
   500 "No module named 'torchaudio'"-like failure. The extension is now optional, as torchaudio
   already treats a build without it; `torchaudio.functional.resample` is plain PyTorch.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Patch:
    """Replace `old` by `new` (each must occur exactly once) in `path` under `package`."""

    package: str
    path: str
    old: str
    new: str


PATCHES = (
    Patch(
        "sglang",
        "srt/configs/update_config.py",
        "    if attr_value is not None and attr_value % intermediate_padding_size != 0:",
        "    if (\n"
        "        attr_value is not None\n"
        "        and not isinstance(attr_value, (list, tuple))  # gemma3n-gateway CPU patch 1\n"
        "        and attr_value % intermediate_padding_size != 0\n"
        "    ):",
    ),
    Patch(
        "sglang",
        "srt/layers/attention/torch_native_backend.py",
        "        save_kv_cache=True,\n"
        "    ):\n"
        "        if layer.qk_head_dim != layer.v_head_dim:\n"
        "            o = q.new_empty((q.shape[0], layer.tp_q_head_num * layer.v_head_dim))\n"
        "        else:\n"
        "            o = torch.empty_like(q)\n"
        "\n"
        "        if layer.is_cross_attention:",
        "        save_kv_cache=True,\n"
        "    ):\n"
        "        # gemma3n-gateway CPU patch 2: Gemma 3n passes q as [tokens, heads, head_dim].\n"
        "        q = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim)\n"
        "        if layer.qk_head_dim != layer.v_head_dim:\n"
        "            o = q.new_empty((q.shape[0], layer.tp_q_head_num * layer.v_head_dim))\n"
        "        else:\n"
        "            o = torch.empty_like(q)\n"
        "\n"
        "        if layer.is_cross_attention:",
    ),
    *(
        Patch(
            "torchvision",
            "_meta_registrations.py",
            f'@torch.library.register_fake("torchvision::{op}")\n',
            "@(  # gemma3n-gateway CPU patch 3: CUDA-built ops don't load beside CPU torch\n"
            f'    torch.library.register_fake("torchvision::{op}")\n'
            f"    if torchvision.extension._has_ops()\n"
            f"    else (lambda fn: fn)\n"
            f")\n",
        )
        for op in ("nms", "qnms")
    ),
    Patch(
        "torchaudio",
        "_extension/__init__.py",
        '_IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib("_torchaudio")\n',
        "try:  # gemma3n-gateway CPU patch 4: CUDA-built extension doesn't load beside CPU torch\n"
        '    _IS_TORCHAUDIO_EXT_AVAILABLE = _load_lib("_torchaudio")\n'
        "except OSError:\n"
        "    _IS_TORCHAUDIO_EXT_AVAILABLE = False\n",
    ),
)


def package_root(package: str) -> Path:
    """An installed package's folder, found without importing it (the imports are slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{package} is not installed in this interpreter")
    return Path(spec.origin).parent


def state(text: str, patch: Patch) -> str:
    """'patched', 'original', or a description of why the file matches neither."""
    if text.count(patch.new) == 1 and patch.old not in text.replace(patch.new, ""):
        return "patched"
    if text.count(patch.old) == 1 and patch.new not in text:
        return "original"
    counts = f"original text {text.count(patch.old)}x, patched {text.count(patch.new)}x"
    return f"unrecognised ({counts})"


def main(argv: list[str]) -> int:
    check_only = argv[1:] == ["--check"]
    if argv[1:] not in ([], ["--check"]):
        print("usage: patch_sglang.py [--check]", file=sys.stderr)
        return 2
    failed = False
    for patch in PATCHES:
        file = package_root(patch.package) / patch.path
        text = file.read_text()
        found = state(text, patch)
        if found == "original" and not check_only:
            file.write_text(text.replace(patch.old, patch.new, 1))
            found = state(file.read_text(), patch)
            print(f"patched: {patch.package}/{patch.path}")
        elif found == "patched":
            print(f"already patched: {patch.package}/{patch.path}")
        if found != "patched":
            print(f"NOT patched: {patch.package}/{patch.path}: {found}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
