"""The layout of issue 11: the root holds only entry scripts, and gateway/'s folders are layers.

Each module's imports are read with `ast` (nothing is imported), so a new module that reaches
upwards (a media module importing the API models, say) fails here with the offending line.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ENTRY_SCRIPTS = {"app.py", "model_handler.py", "download_model.py"}

# Lowest first. A module may import from its own layer and from any layer before it.
LAYERS = [
    ("gateway.errors", "gateway.settings", "gateway.tempfiles"),
    ("gateway.playground",),  # static files and their routes: nothing of ours above the base
    ("gateway.server",),
    ("gateway.sglang",),
    ("gateway.media",),
    ("gateway.speech",),
    ("gateway.api",),
    ("gateway.chat",),
    ("gateway.responses",),
    ("model_handler", "download_model"),
    ("app",),
]


def _layer(module: str) -> int | None:
    if module == "gateway":  # the package's own __init__, and `from gateway import x`
        return 0
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from gateway import errors` imports gateway.errors, not the package.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _tracked_python_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


def test_the_root_holds_only_the_entry_scripts() -> None:
    at_root = {name for name in _tracked_python_files() if "/" not in name}
    assert at_root == ENTRY_SCRIPTS


def test_every_package_folder_says_what_it_owns() -> None:
    for folder in [ROOT / "gateway", *(p for p in (ROOT / "gateway").iterdir() if p.is_dir())]:
        if folder.name == "__pycache__":
            continue
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} has no __init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 80, f"{init} needs a paragraph saying what it owns"


@pytest.mark.parametrize(
    "path",
    sorted(
        [ROOT / name for name in ENTRY_SCRIPTS] + list((ROOT / "gateway").rglob("*.py")),
    ),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_no_module_imports_a_layer_above_its_own(path: Path) -> None:
    module = _module_name(path)
    rank = _layer(module)
    assert rank is not None, f"{module} belongs to no layer: add its folder to LAYERS"
    upward = [
        f"line {line}: {imported}"
        for line, imported in _imports(path)
        if (other := _layer(imported)) is not None and other > rank
    ]
    assert not upward, f"{module} imports from a higher layer: {upward}"
