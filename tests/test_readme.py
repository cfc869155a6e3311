"""The README's first two commands are the ones CI runs; keep the markers and the example honest."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_carries_the_ci_commands_first() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- ci:(\w+) -->\n```sh\n(.+)\n```", text)
    assert [name for name, _ in blocks] == ["setup", "test"]
    setup, test = (cmd for _, cmd in blocks)
    assert "pip install -e '.[test,lint]'" in setup and "agentshards demo" in setup
    assert "pytest" in test
    assert text.index("ci:setup") < text.index("```python")  # the two commands come first
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_block setup" in ci and "readme_block test" in ci
