"""``tune``'s winner as a named configuration (``<step>/configs/<name>.pbtxt``, Triton's ``--model-config-name``), in
the local repository and translated to the cluster's onnxruntime repository, and the chart values that select it.
No server: the configs are parsed back with Triton's protobuf and the chart is rendered by Helm's engine."""

from __future__ import annotations

import shutil

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import make_export  # a tiny export directory: no TensorFlow needed
from triton_deploy.cli import main
from triton_deploy.repository.render import RepositoryOptions
from triton_deploy.repository.writer import generate_repository
from triton_deploy.tuning import TuneOptions, cluster, report
from triton_deploy.tuning.knobs import Candidate
from triton_deploy.tuning.run import _write_named
from triton_deploy.tuning.space import EnsembleConfigs


@pytest.fixture(scope="module")
def repositories(tmp_path_factory):
    """The local (python classifier) and the cluster (onnxruntime classifier) repositories of one export."""
    root = tmp_path_factory.mktemp("tune-cluster")
    export = make_export(root / "tiny")
    generate_repository([export], RepositoryOptions(output=root / "local"))
    generate_repository([export], RepositoryOptions(output=root / "cluster", classifier_backend="onnxruntime",
                                                    intra_op_threads=2))
    return root / "local", root / "cluster"


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def winner(configs: EnsembleConfigs, **values) -> tuple[Candidate, list]:
    knobs = configs.knobs(cpus=2)
    by_name = {k.name: k for k in knobs}
    candidate = Candidate()
    for name, value in values.items():
        candidate = candidate.with_value(by_name[name.replace("__", ".")], value)
    return candidate, knobs


def test_named_configs_are_written_for_the_changed_steps_only(repositories, tmp_path):
    local, _ = repositories
    configs = EnsembleConfigs.read(local, "tiny")
    candidate, knobs = winner(configs, tiny_classifier__instances=3, tiny_classifier__dynamic_batching=False,
                              tiny_postprocess__instances=2)
    texts, skipped = cluster.winner_for(configs, candidate, knobs)
    assert sorted(texts) == ["tiny_classifier", "tiny_postprocess"] and skipped == []
    for name in texts:
        (tmp_path / name).mkdir()
    written = cluster.write_named(tmp_path, texts, "tuned")
    classifier = parse(tmp_path / "tiny_classifier" / "configs" / "tuned.pbtxt")
    assert classifier.instance_group[0].count == 3 and not classifier.HasField("dynamic_batching")
    assert classifier.backend == "python" and classifier.name == "tiny_classifier"  # a whole config, not a patch
    assert parse(tmp_path / "tiny_postprocess" / "configs" / "tuned.pbtxt").instance_group[0].count == 2
    assert len(written) == 2 and not list(tmp_path.glob("*/configs/.*"))  # no staging file left


def test_the_winner_is_translated_to_the_cluster_onnxruntime_classifier(repositories):
    local, remote = repositories
    candidate, knobs = winner(EnsembleConfigs.read(local, "tiny"), tiny_classifier__instances=3,
                              tiny_classifier__intra_op_threads="1", tiny_classifier__session_batch_size="4",
                              tiny_classifier__max_queue_delay_us=200)
    texts, skipped = cluster.winner_for(EnsembleConfigs.read(remote, "tiny"), candidate, knobs)
    config = text_format.Parse(texts["tiny_classifier"], model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"  # the cluster's backend stays
    assert config.instance_group[0].count == 3
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert "session_batch_size" not in config.parameters
    assert skipped == ["tiny_classifier.session_batch_size=4"]  # a python-classifier setting, said so


def test_auto_threads_are_not_forced_on_the_cluster_classifier(repositories):
    local, remote = repositories
    configs = EnsembleConfigs.read(local, "tiny")
    knob = next(k for k in configs.knobs(cpus=2) if k.field == "intra_op_threads")
    # A start with a number, a winner with "auto": the onnxruntime backend takes numbers only.
    moved = type(knob)(knob.model, knob.field, ("1", "auto"))
    texts, skipped = cluster.winner_for(EnsembleConfigs.read(remote, "tiny"), Candidate().with_value(moved, "auto"),
                                        [moved])
    assert texts == {} and skipped == ["tiny_classifier.intra_op_threads=auto"]


def test_write_named_puts_both_repositories_and_the_values_file_in_the_report(repositories, tmp_path):
    local, remote = repositories
    shutil.copytree(local, tmp_path / "written")
    shutil.copytree(remote, tmp_path / "cluster")
    configs = EnsembleConfigs.read(local, "tiny")
    candidate, knobs = winner(configs, tiny_classifier__instances=1, tiny_classifier__session_batch_size="4")
    options = TuneOptions(repository=local, model="tiny", p99_ms=10, output=tmp_path / "written",
                          report_dir=tmp_path / "report", cluster_repository=tmp_path / "cluster", config_name="c8")
    (tmp_path / "report").mkdir()
    before = (tmp_path / "cluster" / "tiny_classifier" / "config.pbtxt").read_text()
    written = _write_named(configs, EnsembleConfigs.read(tmp_path / "cluster", "tiny"), candidate, knobs, options,
                           tmp_path / "written")
    assert parse(tmp_path / "written" / "tiny_classifier" / "configs" / "c8.pbtxt").instance_group[0].count == 1
    assert parse(tmp_path / "cluster" / "tiny_classifier" / "configs" / "c8.pbtxt").instance_group[0].count == 1
    assert (tmp_path / "cluster" / "tiny_classifier" / "config.pbtxt").read_text() == before  # the default stays
    values = yaml.safe_load((tmp_path / "report" / "values-c8.yaml").read_text())
    assert values == {"server": {"modelConfigName": "c8"}}
    assert written["helm_set"] == "--set server.modelConfigName=c8"
    lines = report.cluster_lines(written)
    assert any("--set server.modelConfigName=c8" in line and "values-c8.yaml" in line for line in lines)
    assert any("not carried over" in line and "session_batch_size=4" in line for line in lines)


def test_the_values_file_tune_writes_renders_the_flag_in_the_chart(tmp_path):
    from chart_tools import render, server_container  # Helm's own engine (helm-python-sdk)

    text = cluster.values_text("tuned", ["tiny_classifier.instances=3"])
    args = server_container(render(yaml.safe_load(text)).deployment())["args"]
    assert "--model-config-name=tuned" in args
    assert not any(a.startswith("--model-config-name") for a in server_container(render().deployment())["args"])


def test_tune_cli_refuses_a_bad_config_name_and_a_missing_cluster_repository(repositories, tmp_path, capsys):
    local, _ = repositories
    assert main(["tune", str(local), "--model", "tiny", "--p99-ms", "10", "--output", str(tmp_path / "o"),
                 "--config-name", "has space", "--cluster-repository", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--config-name" in err and "cluster repository" in err and "missing does not exist" in err
    assert "Traceback" not in err
