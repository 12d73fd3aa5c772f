"""Every options object validates the same way: all problems are collected and raised as one ``UsageError`` that
names the first flag to fix and lists the others, before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from triton_deploy.errors import UsageError
from triton_deploy.export.pipeline import ExportOptions, export_model
from triton_deploy.optimize.distill import DistillOptions
from triton_deploy.optimize.options import OptimizeOptions
from triton_deploy.optimize.quantize import Calibration
from triton_deploy.repository.publish import Publisher
from triton_deploy.server import ServerInstallation, ServerOptions, SupervisionPolicy


def test_export_options_report_every_problem_at_once(tmp_path):
    options = ExportOptions(output=tmp_path / "out", opset=3, output_kind="softmax", input_name="9lives")
    with pytest.raises(UsageError) as info:
        export_model(options)
    message = str(info.value)
    assert message.startswith("opset 3 is outside the supported range 7-21; also: ")
    assert "unknown output kind 'softmax'" in message and "--input-name '9lives'" in message
    assert message.endswith("(check --opset)") and not (tmp_path / "out").exists()


def test_optimize_options_include_the_calibration_and_student_problems(tmp_path):
    options = OptimizeOptions(tmp_path, tmp_path / "o", variants=("int8_static", "distilled"), max_accuracy_drop=-1,
                              calibration=Calibration(method="mse"), distill=DistillOptions(epochs=0))
    with pytest.raises(UsageError) as info:
        options.check()
    message = str(info.value)
    assert message.startswith("--max-accuracy-drop -1 is negative")
    assert "unknown calibration method 'mse'" in message and "at least one epoch" in message
    assert "(check --max-accuracy-drop)" in message


def test_publisher_reports_mode_and_version_policy_together(tmp_path):
    with pytest.raises(UsageError) as info:
        Publisher(tmp_path, mode="copies", version_policy="newest").check()
    assert "unknown publish mode 'copies'; also: " in str(info.value) and "--publish-as" in str(info.value)


def test_server_options_report_exposure_and_ports_together():
    installation = ServerInstallation.discover()
    if installation.caps_http_body:
        pytest.skip("this Triton caps HTTP bodies: exposing it is allowed")
    with pytest.raises(UsageError) as info:
        ServerOptions(repository=Path("r"), host="0.0.0.0", grpc_port=70000).check(installation)
    message = str(info.value)
    assert message.startswith("--host 0.0.0.0 exposes the server") and "--grpc-port 70000 is not a port" in message
    assert "--allow-uncapped-http" in message
    ServerOptions(repository=Path("r"), host="0.0.0.0", allow_uncapped_http=True).check(installation)


def test_supervision_policy_names_both_flags():
    with pytest.raises(UsageError, match="unknown --stub-failure 'retry'; also: --max-restarts -1 is negative"):
        SupervisionPolicy(stub_failure="retry", max_restarts=-1).check()
