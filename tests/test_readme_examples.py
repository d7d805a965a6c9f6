"""The README's Tools and Responses API examples run, as written, against the gateway.

Each ```python block of those sections is executed with `client` (the SDK pointed at the
gateway, as the README's "Using it" section builds it) and `print` captured; each ```sh block
is run by bash with the README's `localhost:8000` replaced by the gateway's address, and must
answer JSON without an error.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import ServerThread
from fake_sglang import FakeSGLang

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECTIONS = ("### Tools", "### Responses API")


def section(title: str) -> str:
    start = README.index(title + "\n")
    end = README.index("\n### ", start + len(title))
    return README[start:end]


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for title in SECTIONS:
        for block in re.findall(rf"```{language}\n(.*?)```", section(title), flags=re.DOTALL):
            found.append((title, block))
    return found


@pytest.mark.parametrize(("title", "code"), blocks("python"), ids=lambda v: v[:20])
def test_python_examples_run(
    title: str, code: str, client: openai.OpenAI, fake: FakeSGLang
) -> None:
    printed: list[str] = []

    def capture(*values: Any, **_: Any) -> None:
        printed.append(" ".join(str(v) for v in values))

    exec(compile(code, f"README {title}", "exec"), {"client": client, "print": capture})
    assert printed and all("Error" not in line for line in printed)


@pytest.mark.parametrize(("title", "command"), blocks("sh"), ids=lambda v: v[:20])
def test_curl_examples_run(title: str, command: str, gateway: ServerThread) -> None:
    command = command.replace("http://localhost:8000", gateway.url)
    ran = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["object"] in ("chat.completion", "response"), answer
    assert answer.get("error") is None and answer.get("status", "completed") == "completed"
