"""Write the reference tables in the docs from their one source, so they are never kept by hand.

Each table sits in a marked region of a Markdown file::

    <!-- generated:exit-codes -->
    ...written by this script...
    <!-- /generated:exit-codes -->

Regions and their sources:

- ``exit-codes``: ``EXIT_CODES`` in ``triton_deploy/errors.py`` (class name -> code and meaning).
- ``manifest-keys``: the "Manifest format" block of ``triton_deploy/spec.py``'s module docstring.
- ``cli-reference``: every subcommand's ``--help``, from the real argument parser.
- ``robustness-conditions``: the conditions of the robustness suite in ``export/robustness.py``.

``.venv/bin/python scripts/gen_docs.py`` rewrites the regions in README.md and docs/*.md; ``--check`` only reports
the files that differ (exit 1), which is what ``tests/unit/test_docs.py`` asserts stays clean.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELP_COLUMNS = 118  # the width the CLI reference is wrapped at, whatever the terminal running this script


def exit_codes() -> str:
    from triton_deploy.errors import EXIT_CODES

    rows = sorted(EXIT_CODES.items(), key=lambda item: item[1][0])
    lines = ["| code | error | meaning |", "|---:|---|---|"]
    lines += [f"| {code} | `{name}` | {meaning} |" for name, (code, meaning) in rows]
    return "\n".join(lines)


def manifest_keys() -> str:
    """The key table of the manifest, parsed from the indented block after "Manifest format" in spec.py's
    docstring: a key line starts at four spaces, its continuation lines are indented further."""
    from triton_deploy import spec

    doc = spec.__doc__ or ""
    block = doc.split("Manifest format", 1)[1].split("::", 1)[1]
    rows: list[list[str]] = []
    for line in block.splitlines():
        if not line.strip():
            if rows:
                break  # the blank line after the block ends it
            continue
        key_line = re.match(r"    ([^\s,]+(?:, [^\s,]+)*)\s*(.*)$", line)
        if key_line and not line.startswith("     "):
            rows.append([key_line[1], key_line[2].strip()])
        elif rows:
            rows[-1][1] += " " + line.strip()
    if not rows:
        raise SystemExit("gen_docs: no manifest keys found in triton_deploy/spec.py's docstring")
    lines = ["| key | meaning |", "|---|---|"]
    lines += [f"| {', '.join(f'`{k}`' for k in keys.split(', '))} | {_cell(meaning)} |" for keys, meaning in rows]
    return "\n".join(lines)


def robustness_conditions() -> str:
    """The robustness suite's conditions, as ``export/robustness.py`` defines them, for digits and for samples."""
    from triton_deploy.export.robustness import DIGIT_CONDITIONS, SAMPLE_CONDITIONS

    lines = ["| condition | how the held-out digits are drawn |", "|---|---|"]
    lines += [f"| `{c.name}` | {_cell(c.description)} |" for c in DIGIT_CONDITIONS]
    lines += ["", "With `--samples DIR` (your own model):", "",
              "| condition | how the samples are changed |", "|---|---|"]
    lines += [f"| `{c.name}` | {_cell(c.description)} |" for c in SAMPLE_CONDITIONS]
    return "\n".join(lines)


def cli_reference() -> str:
    from triton_deploy.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)  # argparse wraps help to the terminal's width
    try:
        parser = build_parser()
        (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parts = []
        for name, sub in subparsers.choices.items():
            parts += [f"### `triton-deploy {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
        return "\n".join(parts).rstrip()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def _cell(text: str) -> str:
    """A docstring's text as a Markdown table cell (reST ``literals`` become `code`)."""
    return text.replace("``", "`").replace("|", "\\|")


REGIONS: dict[str, Callable[[], str]] = {
    "exit-codes": exit_codes,
    "manifest-keys": manifest_keys,
    "cli-reference": cli_reference,
    "robustness-conditions": robustness_conditions,
}
_REGION = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def render(text: str, contents: dict[str, str]) -> str:
    """``text`` with every marked region's body replaced by its generated content."""

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in contents:
            raise SystemExit(f"gen_docs: unknown generated region {name!r} (known: {', '.join(REGIONS)})")
        return f"{match[1]}{contents[name]}\n{match[4]}"

    return _REGION.sub(fill, text)


def regions_in(text: str) -> list[str]:
    return [m["name"] for m in _REGION.finditer(text)]


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def generate_all() -> dict[str, str]:
    return {name: make() for name, make in REGIONS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report out-of-date files, write nothing")
    args = parser.parse_args(argv)
    contents = generate_all()
    stale = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        new = render(text, contents)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "out of date" if args.check else "rewritten"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
