"""The README and docs/ say only what works: every example is checked against the real code, without a server.

- every ``triton-deploy ...`` line in a fenced shell block parses with the real argument parser and names only
  options that exist (argparse would accept an unambiguous prefix; a reader copying it should not rely on that);
- every ``make`` line names a target of the Makefile;
- YAML and JSON blocks parse; Python blocks compile and import only names the package has;
- relative links reach a file, and their ``#anchor`` a heading of it;
- the tables written by ``scripts/gen_docs.py`` are what it would write now;
- the README fits one screen and links every docs page.

The README's command sequence is run for real in ``test_readme_flow.py``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from triton_deploy.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # noqa: E402
from doc_examples import FENCE, fenced_blocks, shell_commands  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
# Pages written on parallel branches at the time these docs were split; the README links them already. A link to one
# of them is checked as soon as the page exists.
def _examples(kinds: set[str]) -> list:
    found = []
    for path in DOCS:
        for language, body, line in fenced_blocks(path):
            if language in kinds:
                found.append(pytest.param(body, id=f"{path.relative_to(ROOT)}:{line}"))
    return found


def _cli_examples() -> list:
    found = []
    for path in DOCS:
        for language, body, line in fenced_blocks(path):
            if language not in SHELL:
                continue
            for command in shell_commands(body):
                if Path(command[0]).name == "triton-deploy":
                    found.append(pytest.param(command[1:], id=f"{path.relative_to(ROOT)}:{line}:{command[1]}"))
    return found


def _subparser(parser, name):
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return subparsers.choices[name]


def test_the_docs_hold_cli_examples_for_every_command():
    """The extraction below finds the examples (a broken fence pattern would make every check pass vacuously)."""
    commands = {p.values[0][0] for p in _cli_examples()}
    assert {"export", "repo", "serve", "stop", "classify", "evaluate", "loadtest", "bench", "optimize",
            "tensorrt-check", "monitor"} <= commands


@pytest.mark.parametrize("argv", _cli_examples())
def test_cli_example_parses_with_the_real_parser_and_exact_option_names(argv):
    parser = build_parser()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"triton-deploy {shlex.join(argv)}: argparse exit {exit_.code}: {stderr.getvalue().strip()}")
    options = {s for a in _subparser(parser, argv[0])._actions for s in a.option_strings}
    named = [token.split("=", 1)[0] for token in argv[1:] if token.startswith("-") and len(token) > 1]
    assert [o for o in named if o not in options] == [], f"options not spelt as the parser has them: {argv}"


def test_make_examples_name_makefile_targets():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = [(c[1], p.id) for p in _examples(SHELL) for c in shell_commands(p.values[0])
            if c[0] == "make" and len(c) > 1 and "=" not in c[1]]
    assert used, "no make examples found"
    assert [(target, where) for target, where in used if target not in targets] == []


def test_yaml_and_json_examples_parse():
    parsers = {"yaml": lambda b: list(yaml.safe_load_all(b)), "yml": lambda b: list(yaml.safe_load_all(b)),
               "json": json.loads}
    broken = []
    for path in DOCS:
        for language, body, line in fenced_blocks(path):
            try:
                parsers.get(language, str)(body)
            except (ValueError, yaml.YAMLError) as exc:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {exc}")
    assert broken == []


@pytest.mark.parametrize("body", _examples({"python", "py"}))
def test_python_example_compiles_and_imports_what_exists(body):
    tree = compile(body, "<example>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("triton_deploy"):
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert missing == [], f"{node.module} has no {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))  # a "# ..." line in a code block is no heading
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(path):
    broken = []
    for link in _links(path):
        if re.match(r"[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        target_text, _, anchor = link.partition("#")
        target = (path.parent / target_text).resolve() if target_text else path
        if not target.exists():
            broken.append(link)
            continue
        if anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(link)
    assert broken == []


def test_generated_tables_match_their_sources():
    contents = gen_docs.generate_all()
    stale = [str(p.relative_to(ROOT)) for p in DOCS if gen_docs.render(p.read_text(), contents) != p.read_text()]
    assert stale == [], f"{stale}: run '.venv/bin/python scripts/gen_docs.py' and commit the result"
    regions = {name for p in DOCS for name in gen_docs.regions_in(p.read_text())}
    assert regions == set(gen_docs.REGIONS), "every generated table has its place in the docs"


def test_generated_exit_code_table_is_the_exit_code_table():
    from triton_deploy.errors import EXIT_CODES

    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+) \|$", gen_docs.exit_codes(), flags=re.M)
    assert {name: (int(code), meaning) for code, name, meaning in rows} == EXIT_CODES


def test_generated_manifest_keys_cover_what_a_manifest_writes():
    from triton_deploy.spec import OPTIONAL_KEYS

    table = gen_docs.manifest_keys()
    for key in ("name", "input", "output", "preprocessing", "parity", "robustness", "reference", *OPTIONAL_KEYS):
        assert f"`{key}`" in table, key


def test_readme_is_one_screen_with_the_two_commands_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    top = "\n".join(lines[:15])
    assert "make demo" in top and "make test" in top
    assert "source .venv/bin/activate" in "\n".join(lines[:20])


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert [page for page in sorted(pages) if f"]({page}" not in readme] == []


def test_the_sample_demo_output_has_the_steps_the_demo_prints():
    """docs/results.md shows what `make demo` prints: its numbered steps are the demo's, in order, and each step's
    command line is the one the demo prints."""
    source = (ROOT / "triton_deploy" / "demo.py").read_text()
    steps = re.findall(r"\[bold\](\d\. [A-Za-z ]+)\[/\]  ([^\"{]*)", source)
    sample = next(body for language, body, _ in fenced_blocks(ROOT / "docs" / "results.md")
                  if language == "text" and "Demo complete." in body)
    shown = re.findall(r"^(\d\. [A-Za-z ]+?)  (.*)$", sample, flags=re.M)
    assert [title for title, _ in shown] == [title for title, _ in steps]
    for (_, printed), (_, literal) in zip(shown, steps):
        assert printed.startswith(literal.rstrip()), (printed, literal)
