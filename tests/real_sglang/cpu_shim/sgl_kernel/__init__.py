"""A pure-PyTorch stand-in for the CPU build of sgl-kernel, installed into the tier's SGLang venv.

SGLang 0.5.21's CPU engine (`SGLANG_USE_CPU_ENGINE=1`) imports a handful of `*_cpu` functions
from `sgl_kernel` at module level, and calls one of them on every request
(`assign_req_to_token_pool_cpu`, which writes a request's KV-cache slots into its row of the
request-to-token table). sgl-kernel's CPU build is compiled from SGLang's source tree and is not
on PyPI (PyPI's sgl-kernel is CUDA-only), so scripts/install-real-sglang.sh copies this package
into the venv instead. Without it: `ModuleNotFoundError: No module named 'sgl_kernel'` from
`sglang/srt/mem_cache/allocation.py` at start-up.

What it deliberately does not provide: any `torch.ops.sgl_kernel` operator, so SGLang's Intel
AMX fast paths (`cpu_has_amx_support()` checks for `torch.ops.sgl_kernel.convert_weight_packed`)
stay off and every layer runs SGLang's own native-PyTorch implementation. Functions SGLang only
imports for paths Gemma 3n never takes (speculative decoding, Mamba) raise NotImplementedError
naming themselves if they are ever called.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch

__version__ = "0.0.0+gemma3n-gateway-cpu-shim"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Row `req_pool_indices[i]` of `req_to_token`, columns start..end, gets the next
    `end - start` entries of `out_cache_loc` (SGLang's triton `assign_req_to_token_pool`)."""
    offset = 0
    rows, starts, ends = req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist()
    for row, start, end in zip(rows, starts, ends, strict=True):
        req_to_token[row, start:end] = out_cache_loc[offset : offset + end - start]
        offset += end - start


def _missing(name: str) -> Any:
    def unavailable(*args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{name}: not provided by the gemma3n-gateway CPU shim (Gemma 3n on the "
            "CPU test tier does not use it)"
        )

    unavailable.__name__ = name
    return unavailable


def __getattr__(name: str) -> Any:
    # Only the CPU kernels SGLang imports by name; anything else stays absent, so that feature
    # probes (hasattr) still see a kernel library without it.
    if name.endswith("_cpu"):
        return _missing(name)
    raise AttributeError(name)
