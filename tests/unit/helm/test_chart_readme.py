"""Every YAML example in the chart README passes the command it is meant for.

Each ```yaml block carries an HTML comment right above it saying what it is (`<!-- example: KIND ... -->`):
- `values`: a complete values file: `make chart-lint VALUES=<file>` (schema, `helm lint --strict`, render) passes.
- `values added to values-prod.yaml`: merged over the `values` example, the same command passes.
- `prometheus-adapter rule`: equal to the rule the chart renders (copying it works).
- `Istio VirtualService`: routes to the Services and HTTP port the chart renders for release digits in namespace ml.
A block without a marker, or with an unknown one, fails: a new example must say how it is checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import helm_python
import pytest
import yaml

from chart_tools import CHART, deep_merge, render, render_scenario

README = CHART / "README.md"
BLOCK = re.compile(r"(?:<!-- example: (?P<kind>[^(>]+?)\s*(?:\([^)]*\))?\s*-->\n)?```yaml\n(?P<body>.*?)```", re.S)
KINDS = {"values", "values added to values-prod.yaml", "prometheus-adapter rule", "Istio VirtualService"}


def examples() -> list[tuple[str, str]]:
    return [((m["kind"] or "").split(" for ")[0].strip(), m["body"]) for m in BLOCK.finditer(README.read_text())]


def test_every_yaml_example_says_how_it_is_checked():
    found = examples()
    assert len(found) >= 4
    unmarked = [body.splitlines()[0] for kind, body in found if kind not in KINDS]
    assert not unmarked, f"yaml examples without a known <!-- example: ... --> marker: {unmarked}"


def values_examples(tmp_path: Path) -> dict[str, Path]:
    found = examples()
    (base,) = [yaml.safe_load(body) for kind, body in found if kind == "values"]
    files = {"values-prod": base}
    overlays = [yaml.safe_load(body) for kind, body in found if kind == "values added to values-prod.yaml"]
    for index, overlay in enumerate(overlays):
        files[f"values-prod-plus-{index}"] = deep_merge(base, overlay)
    paths = {}
    for name, values in files.items():
        paths[name] = tmp_path / f"readme-{name}.yaml"
        paths[name].write_text(yaml.safe_dump(values, sort_keys=False))
    return paths


def test_values_examples_pass_make_chart_lint(tmp_path):
    """The command the README gives for them, run as `make chart-lint VALUES=...` runs it."""
    paths = values_examples(tmp_path)
    assert len(paths) >= 2
    script = CHART.parents[1] / "scripts" / "chart_lint.py"
    result = subprocess.run([sys.executable, str(script), *map(str, paths.values())], capture_output=True, text=True,
                            timeout=300)
    for path in paths.values():
        (line,) = [line for line in result.stdout.splitlines() if line.startswith(path.stem + " ")]
        assert line.endswith("lint ok"), result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_example_digest_comment_would_pass_the_schema_once_filled_in():
    """The digest line is a comment to fill in; filled with a real 64-hex digest it renders (`sha256:...` would not)."""
    (base,) = [yaml.safe_load(body) for kind, body in examples() if kind == "values"]
    body = next(body for kind, body in examples() if kind == "values")
    assert re.search(r"^\s*# digest: sha256:<digest>$", body, flags=re.M)
    with pytest.raises(helm_python.HelmValuesError, match="digest"):
        render(deep_merge(base, {"image": {"digest": "sha256:..."}}), release="digits", required=False)
    pinned = deep_merge(base, {"image": {"digest": "sha256:" + "ab" * 32}})
    image = render(pinned, release="digits", required=False).deployment()["spec"]["template"]["spec"]["containers"][0]
    assert image["image"].endswith("@sha256:" + "ab" * 32)


def test_adapter_rule_example_is_the_rendered_rule():
    (body,) = [body for kind, body in examples() if kind == "prometheus-adapter rule"]
    rendered = render({"autoscaling": {"prometheusAdapterRule": {"enabled": True}}})
    (config,) = [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("prometheus-adapter-rule")]
    (text,) = config["data"].values()
    assert yaml.safe_load(body)["rules"] == yaml.safe_load(text)["rules"]


@pytest.mark.parametrize("release,namespace", [("digits", "ml")])
def test_istio_example_routes_to_the_rendered_services(release, namespace):
    (body,) = [body for kind, body in examples() if kind == "Istio VirtualService"]
    service = yaml.safe_load(body)
    assert service["apiVersion"] == "networking.istio.io/v1" and service["kind"] == "VirtualService"
    assert service["metadata"]["namespace"] == namespace
    rendered = render_scenario(None, {"canary": {"enabled": True}}, release=release, namespace=namespace)
    http_port = {s["metadata"]["name"]: next(p["port"] for p in s["spec"]["ports"] if p["name"] == "http")
                 for s in rendered.of_kind("Service")}
    (route,) = service["spec"]["http"]
    destinations = {d["destination"]["host"]: d for d in route["route"]}
    assert set(destinations) == {f"{name}.{namespace}.svc.cluster.local" for name in http_port}
    for name, port in http_port.items():
        assert destinations[f"{name}.{namespace}.svc.cluster.local"]["destination"]["port"]["number"] == port
    assert sum(d["weight"] for d in destinations.values()) == 100
    prefixes = {m["uri"]["prefix"] for m in route["match"]}
    assert prefixes == set(yaml.safe_load((CHART / "values.yaml").read_text())["route"]["pathPrefixes"])
