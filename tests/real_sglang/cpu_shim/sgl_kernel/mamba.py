"""`sgl_kernel.mamba` of the CPU shim: SGLang imports its Mamba CPU kernels by name; Gemma 3n
never calls them (see the package docstring)."""

from __future__ import annotations

from typing import Any

from sgl_kernel import _missing


def __getattr__(name: str) -> Any:
    if name.endswith("_cpu"):
        return _missing(name)
    raise AttributeError(name)
