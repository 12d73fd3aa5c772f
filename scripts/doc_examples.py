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
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at ; && || | &.
    A quoted argument may span lines (a JSON body for curl, a `python -c` program): lines are joined until the
    quotes close."""
    commands: list[list[str]] = []
    pending = ""
    for line in re.sub(r"\\\n", " ", body).splitlines():
        pending = f"{pending}\n{line}" if pending else line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # "No closing quotation": the quoted argument goes on in the next line
            continue
        pending = ""
        current: list[str] = []
        for token in tokens:
            if token in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    if pending:
        raise ValueError(f"unclosed quotation in the shell example: {pending[:80]!r}")
    return [c for c in commands if c]
