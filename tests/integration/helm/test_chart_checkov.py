"""checkov, a widely used third-party policy scanner, on what the chart renders: the defaults (with the required
values) and every ci/ scenario, rendered by Helm's own engine and scanned with checkov's Kubernetes checks.

Any failed check fails the test unless the object skips it on purpose with checkov's own annotation
(`checkov.io/skip<N>: CHECK=reason`), and every check skipped so is listed in the chart README's security notes.
Scanned as rendered files (`--framework kubernetes`): `--framework helm` needs a helm binary and, without one, scans
nothing and still exits 0. All files go through one checkov run, because checkov takes seconds to start.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from chart_tools import CHART, SCENARIOS, render, render_scenario, scenario_id

# A render that takes trade-offs the chart does not make, scanned in the same run: it must fail exactly these
# checks, which shows the scan sees the objects and that the chart's skips are narrow.
CONTROL = "control-low-uid-no-cpu-limit"
CONTROL_VALUES = {"podSecurityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                  "resources": {"limits": {"cpu": None}}}
CONTROL_FAILURES = {("CKV_K8S_40", "Deployment"), ("CKV_K8S_40", "Pod"), ("CKV_K8S_11", "Deployment")}


def checkov_binary() -> str:
    return str(Path(sys.executable).with_name("checkov"))


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict:
    """checkov's JSON report on one file per scenario (plus the control render)."""
    folder = tmp_path_factory.mktemp("rendered")
    renders = {scenario_id(path): render_scenario(path) for path in [None, *SCENARIOS]}
    renders[CONTROL] = render(CONTROL_VALUES)
    for name, rendered in renders.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all([m.obj for m in rendered.manifests]))
    result = subprocess.run([checkov_binary(), "--directory", str(folder), "--framework", "kubernetes",
                             "--skip-download", "--output", "json", "--compact"],
                            capture_output=True, text=True, timeout=300, cwd=folder)
    # Exit 1 means "failed checks", which the tests below report one by one; anything else is a broken run.
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert isinstance(report, dict) and report["check_type"] == "kubernetes", result.stdout[:500]
    return {"report": report, "files": sorted(renders)}


def by_scenario(checks: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for check in checks:
        grouped[Path(check["file_path"]).stem].append(check)
    return grouped


def describe(check: dict) -> str:
    return f"{check['check_id']} ({check['check_name']}) on {check['resource']}"


def test_checkov_scanned_every_rendered_scenario(scan):
    results = scan["report"]["results"]
    summary = scan["report"]["summary"]
    assert summary["passed"] + summary["failed"] > 0, "checkov scanned nothing"
    assert summary["parsing_errors"] == 0
    evaluated = by_scenario(results["passed_checks"] + results["failed_checks"])
    for name in scan["files"]:
        # Each scenario renders a Deployment, a Pod, a Service and more: dozens of checks apply to it.
        assert len(evaluated[name]) > 50, f"checkov evaluated only {len(evaluated[name])} checks in {name}"


def test_no_scenario_fails_a_checkov_check_it_does_not_skip_on_purpose(scan):
    failures = {name: checks for name, checks in by_scenario(scan["report"]["results"]["failed_checks"]).items()
                if name != CONTROL}
    assert not failures, "\n".join(f"{name}: {describe(c)}" for name, checks in sorted(failures.items())
                                   for c in checks)


def test_the_control_render_fails_exactly_the_trade_offs_the_chart_does_not_take(scan):
    failed = by_scenario(scan["report"]["results"]["failed_checks"])[CONTROL]
    assert {(c["check_id"], c["resource"].split(".")[0]) for c in failed} == CONTROL_FAILURES


def test_every_skip_carries_its_reason_and_is_listed_in_the_readme_security_notes(scan):
    skipped = scan["report"]["results"]["skipped_checks"]
    assert skipped, "the chart's deliberate trade-offs should show as skipped checks"
    section = re.search(r"^### \d+\. Security notes\n(.*?)(?=^#)", (CHART / "README.md").read_text(),
                        flags=re.M | re.S)
    assert section, "chart README has no security notes section"
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 30, f"{describe(check)}: reason {reason!r}"
        assert f"`{check['check_id']}`" in section[1], f"{check['check_id']} is skipped but not in the README"


def checkov_skips(obj: dict) -> dict[str, str]:
    annotations = obj["metadata"].get("annotations", {})
    return dict(value.split("=", 1) for key, value in annotations.items() if key.startswith("checkov.io/skip"))


def test_skips_are_annotated_only_while_the_trade_off_is_taken():
    digest = "sha256:" + "b" * 64
    taken = render()
    assert set(checkov_skips(taken.deployment())) == {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
    assert set(checkov_skips(taken.one("Pod"))) == {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_15", "CKV_K8S_43"}
    assert "set image.digest to pin by digest" in checkov_skips(taken.deployment())["CKV_K8S_43"]
    lifted = render({"image": {"digest": digest, "pullPolicy": "Always"},
                     "security": {"restrictedApi": {"enabled": False}},
                     "tests": {"image": {"digest": digest, "pullPolicy": "Always"}}})
    assert checkov_skips(lifted.deployment()) == {}
    assert set(checkov_skips(lifted.one("Pod"))) == {"CKV_K8S_8", "CKV_K8S_9"}
    (container,) = lifted.one("Pod")["spec"]["containers"]
    assert container["image"] == f"docker.io/library/python:3.12-slim@{digest}"
    assert container["imagePullPolicy"] == "Always"
