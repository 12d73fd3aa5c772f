"""``make chart-lint``: render and lint the Helm chart offline with Helm's own engine (helm-python-sdk), exactly as the
tests do, for the default values, every ``ci/*-values.yaml`` scenario and any values files given on the command line.

Each rendering is written to ``build/chart/<name>.yaml`` to read or diff; the exit code is 1 if any lint reports a
warning or an error, 2 if a values file given cannot be read (one line, before anything is linted). No cluster and
no ``helm`` binary are needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' own chart helpers: one rendering path, not two

import helm_python  # noqa: E402
import helm_python.errors  # noqa: E402
import yaml  # noqa: E402
from chart_tools import (  # noqa: E402
    CHART,
    NAMESPACE,
    RELEASE,
    REQUIRED_VALUES,
    SCENARIOS,
    chart,
    load_values,
    scenario_id,
)

OUTPUT = ROOT / "build" / "chart"


def lint_and_render(name: str, values_files: list[Path]) -> list[str]:
    """Problems (severity warning or error) of one values set; its rendering goes to ``OUTPUT/name.yaml``.

    The defaults get the values the chart requires, placeholders for ``image.repository`` (the server image built
    from docker/tritonserver/Dockerfile) and ``security.restrictedApi.existingSecret`` (the admin key's Secret); a
    values file given on the command line must set them itself."""
    values = load_values(*values_files) if values_files else REQUIRED_VALUES
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [f"{m.get('path', '')}: {m.get('err', m)}" for m in report["messages"] if m["severity"] >= 2]
    problems += [str(e) for e in report.get("errors") or []]
    try:
        rendered = chart().render(values, name=RELEASE, namespace=NAMESPACE)
    except helm_python.errors.HelmError as exc:  # e.g. values that break values.schema.json
        rendered = {}
        problems.append(" ".join(str(exc).split()))
    documents = [doc for template, text in sorted(rendered.items()) if not template.endswith("NOTES.txt")
                 for doc in yaml.safe_load_all(text) if doc]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    target = OUTPUT / f"{name}.yaml"
    target.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    status = "ok" if not problems else f"{len(problems)} problem(s)"
    print(f"{name:<14} {len(documents):>3} objects -> {target.relative_to(ROOT)}  lint {status}")
    for problem in problems:
        print(f"    {problem}")
    return problems


def unreadable_values_file(argv: list[str]) -> str | None:
    """One line naming the first values file that cannot be read or parsed, or None."""
    for name in argv:
        path = Path(name)
        try:
            values = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            return f"cannot read values file {path}: no such file"
        except (OSError, UnicodeDecodeError) as exc:
            return f"cannot read values file {path}: {getattr(exc, 'strerror', None) or exc}"
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            return f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        if values is not None and not isinstance(values, dict):
            return f"{path} must hold a mapping of values (key: value), not a {type(values).__name__}"
    return None


def main(argv: list[str]) -> int:
    problem = unreadable_values_file(argv)
    if problem:
        print(f"chart-lint: {problem}", file=sys.stderr)
        return 2
    sets = [("defaults", []), *((scenario_id(p), [p]) for p in SCENARIOS),
            *((Path(f).stem, [Path(f)]) for f in argv)]
    failed = [name for name, files in sets if lint_and_render(name, files)]
    if failed:
        print(f"chart-lint: {', '.join(failed)} did not lint clean", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
