"""The agent and extraction clients' default tool modes against the gateway (issue 14).

LangChain (`langchain-openai`'s `bind_tools`, a tool loop, and `with_structured_output` by
function calling) runs in this process. instructor's default mode (`Mode.TOOLS`: a named
`tool_choice`) runs in a venv of its own, built once and cached (instructor 1.17 and the openai
of requirements-dev.txt want different jiter versions), against the same gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import MODEL, ServerThread
from fake_sglang import FakeSGLang
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

HERE = Path(__file__).parent / "clients"
CACHE = Path(os.environ.get("GATEWAY_TEST_CACHE", Path.home() / ".cache" / "gemma3n-gateway"))


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Answer(BaseModel):
    """An answer with a confidence."""

    text: str
    confidence: float


def chat_model(gateway: ServerThread) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=15
    )


def test_langchain_bind_tools_loop(gateway: ServerThread, fake: FakeSGLang) -> None:
    text = '{"name": "multiply", "parameters": {"a": 6, "b": 7}}'
    fake.reply_tokens = [text[i : i + 5] for i in range(0, len(text), 5)]
    llm = chat_model(gateway).bind_tools([multiply])
    history = [HumanMessage("What is 6 times 7?")]
    reply = llm.invoke(history)
    (call,) = reply.tool_calls
    assert call["name"] == "multiply" and call["args"] == {"a": 6, "b": 7}
    # The agent's step: run the tool, send its result back, get the answer.
    result = multiply.invoke(call["args"])
    fake.reply_tokens = ["It is ", "42."]
    final = llm.invoke([*history, reply, ToolMessage(str(result), tool_call_id=call["id"])])
    assert final.content == "It is 42." and not final.tool_calls
    sent = fake.chat_requests[-1]["messages"]
    assert sent[-1]["content"] == "Result of multiply:\n```tool_output\n42\n```"
    # Streaming, as agents run by default in LangGraph.
    fake.reply_tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    chunks = list(llm.stream(history))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk  # type: ignore[assignment]
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("multiply", {"a": 6, "b": 7})]  # type: ignore[attr-defined]


def test_langchain_structured_output_by_function_calling(
    gateway: ServerThread, fake: FakeSGLang
) -> None:
    structured = chat_model(gateway).with_structured_output(Answer, method="function_calling")
    answer = structured.invoke("Is water wet?")
    assert isinstance(answer, Answer)
    sent = fake.chat_requests[-1]
    assert sent["response_format"]["type"] == "json_schema"  # a named tool_choice: constrained


@pytest.fixture(scope="session")
def instructor_python() -> Path:
    requirements = HERE / "requirements-instructor.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    home = CACHE / f"instructor-venv-{digest}"
    python = home / "bin" / "python"
    if not (home / "READY").is_file():
        venv.create(home, with_pip=True, clear=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if installed.returncode != 0:
            pytest.fail(f"could not install instructor:\n{installed.stderr[-3000:]}")
        (home / "READY").write_text(sys.version)
    return python


def test_instructor_default_mode(
    gateway: ServerThread, fake: FakeSGLang, instructor_python: Path
) -> None:
    ran = subprocess.run(
        [str(instructor_python), str(HERE / "instructor_check.py"), f"{gateway.url}/v1", MODEL],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["mode"] == "TOOLS"
    assert set(result["city"]) == {"name", "population", "coastal"}
    sent = fake.chat_requests[-1]
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["name"] == {
        "const": "City"
    }
