"""Run by tests/test_clients.py in instructor's own venv: extract with instructor's default mode.

Usage: instructor_check.py BASE_URL MODEL. Prints the extracted object as JSON, and the mode.
"""

from __future__ import annotations

import json
import sys

import instructor
from openai import OpenAI
from pydantic import BaseModel


class City(BaseModel):
    name: str
    population: int
    coastal: bool


def main() -> None:
    base_url, model = sys.argv[1:3]
    client = instructor.from_openai(OpenAI(base_url=base_url, api_key="unused", max_retries=0))
    city = client.chat.completions.create(
        model=model,
        response_model=City,
        max_retries=0,
        messages=[{"role": "user", "content": "Tell me about Lisbon."}],
    )
    print(json.dumps({"mode": client.mode.name, "city": city.model_dump()}))


if __name__ == "__main__":
    main()
