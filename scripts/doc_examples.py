"""Finding the examples in Markdown: fenced blocks and the simple commands of a shell block.

Used by the tests that check every example in README.md and docs/ (``tests/unit/test_docs.py``,
``tests/integration/test_readme_flow.py``).
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
    for line in _logical_lines(re.sub(r"\\\n", " ", body)):
        current: list[str] = []
        for token in _lexer(line):
            if token in SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def _lexer(line: str) -> shlex.shlex:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return lexer


def _logical_lines(text: str) -> list[str]:
    """Lines, with a quoted string that spans several lines (a JSON body, ``python -c "..."``) kept in one."""
    lines: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            list(_lexer(pending))
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        lines.append(pending)
        pending = ""
    return lines + ([pending] if pending else [])
