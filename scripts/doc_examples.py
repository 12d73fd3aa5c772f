"""Finding the examples in Markdown: fenced blocks and the simple commands of a shell block.

Used by the tests that check every example in README.md and docs/ (``tests/test_docs.py``,
``tests/test_readme_flow.py``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SEPARATORS = {"&&", "||", ";", "|", "&"}


def fenced_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, body, line number) of every fenced block in a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(m[1].lower(), m[2], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at ; && || | &."""
    commands: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", body).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]
