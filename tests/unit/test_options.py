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


def test_optimize_options_refuse_fine_tuning_on_no_drawings_with_the_other_problems(tmp_path):
    options = OptimizeOptions(tmp_path, tmp_path / "o", fine_tune_epochs=-1, fine_tune_renderings=0)
    with pytest.raises(UsageError) as info:
        options.check()
    assert str(info.value).startswith("--fine-tune-epochs must be 0 or more; also: --fine-tune-renderings must be "
                                      "at least 1")


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


def test_a_log_file_that_cannot_be_written_is_refused_before_triton_starts(tmp_path):
    installation = ServerInstallation.discover()
    (tmp_path / "file.txt").write_text("x")
    for log, reason in ((tmp_path / "file.txt" / "triton.log", "is a file, not a directory"),
                        (tmp_path, "it is a directory, not a file")):
        with pytest.raises(UsageError) as info:
            ServerOptions(repository=Path("r"), log_file=log).check(installation)
        assert str(info.value).startswith(f"cannot write --log-file {log}: ") and reason in str(info.value)
    existing = tmp_path / "old.log"
    existing.write_text("kept\n")
    ServerOptions(repository=Path("r"), log_file=existing).check(installation)
    assert existing.read_text() == "kept\n"  # the check appends nothing


def test_supervision_policy_names_both_flags():
    with pytest.raises(UsageError, match="unknown --stub-failure 'retry'; also: --max-restarts -1 is negative"):
        SupervisionPolicy(stub_failure="retry", max_restarts=-1).check()


# ---- the classes that raised on their first problem or in __post_init__ (issue 22 item 3) ------------------------


def test_monitor_options_report_interval_and_url_together(capsys):
    from triton_deploy.cli import main
    from triton_deploy.monitoring.monitor import MonitorOptions

    options = MonitorOptions(metrics_url=" ", interval_s=0)  # built without complaint: check() judges it
    with pytest.raises(UsageError) as info:
        options.check()
    assert str(info.value) == ("--interval must be positive, got 0; also: --metrics-url is empty (check --interval)")
    assert main(["monitor", "--metrics-url", " ", "--interval", "-1", "--once", "--quiet"]) == UsageError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--interval must be positive, got -1; also: --metrics-url is empty" in err[0]


def test_prune_options_report_fraction_and_criterion_together():
    from triton_deploy.optimize.prune import PruneOptions

    with pytest.raises(UsageError) as info:
        PruneOptions(1.5, criterion="taylor").check()
    message = str(info.value)
    assert message.startswith("prune fraction 1.5 must lie strictly between 0 and 1") and message.endswith(
        "; also: unknown pruning criterion 'taylor' (check --prune)")
    PruneOptions(0.5, criterion="l2").check()


def test_evaluate_options_report_every_problem_before_any_output(tmp_path):
    from triton_deploy.clients import TlsOptions
    from triton_deploy.clients.evaluate import EvaluateOptions, evaluate

    missing = tmp_path / "ca.pem"
    options = EvaluateOptions(data_dir=tmp_path / "data", output=tmp_path / "out", min_accuracy=1.5,
                              compare="digits", tls=TlsOptions(ca=missing))
    with pytest.raises(UsageError) as info:
        evaluate(options)
    message = str(info.value)
    assert message.startswith("--min-accuracy must be between 0 and 1, not 1.5; also: ")
    assert "--compare names the same model as --model ('digits')" in message
    assert f"--tls-ca {missing}: no such file" in message and message.endswith("(e.g. --min-accuracy 0.97)")
    assert not (tmp_path / "out").exists()
    # Two versions of one model are an A/B of its classifier versions (compare filled in, not a problem) ...
    versions = EvaluateOptions(data_dir=tmp_path, output=tmp_path / "o", model_version="1", compare_version="2")
    assert versions.compare == "digits" and versions.problems() == []
    # ... and one version against itself is the same model twice.
    with pytest.raises(UsageError, match="--compare names the same model"):
        EvaluateOptions(data_dir=tmp_path, output=tmp_path / "o", model_version="1", compare_version="1").check()


def test_classifier_options_report_every_problem_before_connecting():
    from triton_deploy.clients import AsyncImageClassifier, ImageClassifier
    from triton_deploy.clients.errors import InvalidInputError

    arguments = dict(protocol="smtp", preprocess="edge", concurrency=0, retries=-1, timeout=0, model_version="2")
    for client in (ImageClassifier, AsyncImageClassifier):
        with pytest.raises(InvalidInputError) as info:  # exit code 33, as when the first problem alone was raised
            client("127.0.0.1", **arguments)
        message = str(info.value)
        assert message.startswith("preprocess must be 'server' or 'client', not 'edge'; also: ")
        for part in ("concurrency must be at least 1, not 0", "retries must be 0 or more, not -1",
                     "a model version is called with preprocess='client'", "protocol must be 'http' or 'grpc'",
                     "url '127.0.0.1' is missing a port", "timeout must be positive, not 0"):
            assert part in message
        assert message.endswith("(--preprocess)")


def test_client_tls_files_stay_a_usage_error_checked_before_the_other_arguments(tmp_path):
    from triton_deploy.clients import ImageClassifier, TlsOptions

    ca, cert = tmp_path / "ca.pem", tmp_path / "cert.pem"
    tls = TlsOptions(ca=ca, cert=cert)  # files are judged by check(), not on construction
    with pytest.raises(UsageError) as info:
        tls.check()
    assert str(info.value) == (f"--tls-ca {ca}: no such file; also: --tls-cert {cert}: no such file "
                               "(check --tls-ca)")
    with pytest.raises(UsageError, match="--tls-ca .*: no such file"):
        TlsOptions.from_flags(ca, None, None)  # the flags are refused while the command reads them
    with pytest.raises(UsageError, match="--tls-ca .*: no such file"):
        ImageClassifier("127.0.0.1:1", tls=tls, concurrency=0)


def test_connection_reports_protocol_url_and_timeout_together():
    from triton_deploy.clients.errors import InvalidInputError
    from triton_deploy.clients.transport import Connection, SyncTransport

    connection = Connection("http://h:1", protocol="smtp", timeout_s=0)
    with pytest.raises(InvalidInputError) as info:
        SyncTransport(connection)  # a transport checks its connection before it makes a client
    assert str(info.value) == ("protocol must be 'http' or 'grpc', not 'smtp'; also: url 'http://h:1' must be "
                               "HOST:PORT without a scheme; timeout must be positive, not 0 (--protocol)")


def test_classify_cli_prints_every_client_problem_on_one_line(tmp_path, capsys):
    from triton_deploy.cli import main
    from triton_deploy.clients.errors import InvalidInputError

    (tmp_path / "a.png").write_bytes(b"not read: the options are refused first")
    code = main(["classify", str(tmp_path), "--url", "127.0.0.1", "--concurrency", "0", "--retries", "-1",
                 "--timeout", "0", "--quiet"])
    assert code == InvalidInputError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert ("concurrency must be at least 1, not 0; also: retries must be 0 or more, not -1; url '127.0.0.1' is "
            "missing a port; timeout must be positive, not 0.0 (--concurrency)") in err[0]


def test_classify_checks_its_own_options_before_looking_for_files(tmp_path, capsys):
    from triton_deploy.cli import main

    code = main(["classify", str(tmp_path / "nothing"), "--manifest", str(tmp_path), "--quiet"])
    assert code == UsageError.exit_code
    assert "--manifest is only used with --preprocess client (add --preprocess client)" in capsys.readouterr().err


def test_pool_options_report_formats_sizes_and_count_together(tmp_path):
    from triton_deploy.loadtests.payloads import PoolOptions, pool_from_digits
    from triton_deploy.loadtests.runner import LoadTestOptions

    bad = PoolOptions(count=0, sizes=(0, 64), formats=("TIFFY", "png", "GIFF"))
    with pytest.raises(UsageError) as info:
        pool_from_digits(bad)
    message = str(info.value)
    assert message.startswith("unknown image formats 'TIFFY', 'GIFF'; choose from BMP, JPEG, PNG, WEBP; also: ")
    assert "image sizes [0, 64] must lie in 1..4096" in message and "the pool needs at least one image, got 0" in message
    assert message.endswith("(check --image-formats)")
    assert PoolOptions(image_dir=tmp_path, count=0, formats=("TIFFY",)).problems() == []  # a folder's images win
    # loadtest reports them with its own, before Locust starts (they were a worker's error before)
    with pytest.raises(UsageError) as info:
        LoadTestOptions(url="127.0.0.1:8001", users=0, image_sizes=(5000,), pool_size=0).check()
    message = str(info.value)
    assert message.startswith("--users must be at least 1, got 0; also: ")
    assert "image sizes [5000] must lie in 1..4096" in message and "the pool needs at least one image" in message


def test_serve_options_report_the_policy_problems_together(tmp_path):
    from triton_deploy.server.serve import ServeOptions

    options = ServeOptions(server=ServerOptions(repository=tmp_path),
                           policy=SupervisionPolicy(stub_failure="retry", max_restarts=-1, backoff_s=-1))
    with pytest.raises(UsageError) as info:
        options.check()
    message = str(info.value)
    assert message.startswith("unknown --stub-failure 'retry'; also: --max-restarts -1 is negative; ")
    assert "restart backoff -1-30 s is not a range" in message
    ServeOptions(server=ServerOptions(repository=tmp_path)).check()


def test_loadtest_reports_shape_arg_problems_with_its_other_problems():
    from triton_deploy.loadtests.runner import LoadTestOptions

    options = LoadTestOptions(url="127.0.0.1:8001", users=0, shape="step",
                              shape_args={"stairs": "2", "steps": "x", "step-users": "-1"})
    with pytest.raises(UsageError) as info:
        options.check()
    message = str(info.value)
    assert message.startswith("--users must be at least 1, got 0; also: --shape step has no option stairs; ")
    assert "--shape-arg values must be numbers: steps=x" in message and "--shape-arg values must be positive" in message
