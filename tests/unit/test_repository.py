"""``triton-deploy repo``: golden configs for each classifier backend, Triton-protobuf validation, ensemble
cross-checks, versioning, and errors that leave an existing repository untouched.

These tests use a tiny hand-built ONNX model, so they need neither TensorFlow nor a server.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_export, tiny_onnx  # noqa: F401  (re-exported: other test modules import them from here)
from triton_deploy.cli import main
from triton_deploy.errors import ManifestError, RepositoryError, UsageError
from triton_deploy.repository import validate
from triton_deploy.repository.render import ModelNames, RepositoryOptions, render_configs, tidy
from triton_deploy.repository.writer import generate_repository
from triton_deploy.spec import Manifest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def export(tmp_path) -> Path:
    return make_export(tmp_path / "export")


# ---- golden configs --------------------------------------------------------------------------------------------

VARIANTS = {
    "python": RepositoryOptions(),
    "onnxruntime": RepositoryOptions(classifier_backend="onnxruntime", classifier_instances=2, intra_op_threads=1,
                                     preferred_batch_sizes=(4, 8), max_queue_delay_us=1000,
                                     version_policy="specific:1,2"),
    "tensorrt": RepositoryOptions(classifier_backend="tensorrt", instance_kind="gpu", max_batch_size=16, top_k=2,
                                  dynamic_batching=False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_configs_match_golden_files(variant, export):
    configs = render_configs(Manifest.read(export), VARIANTS[variant], ModelNames.for_prefix("tiny"))
    for name, text in configs.items():
        golden = GOLDEN / variant / f"{name}.pbtxt"
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(tidy(text))
        assert tidy(text) == golden.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 rewrites it after review"
        validate.parse_config(text, name)  # every variant parses with Triton's own schema


def test_every_variant_cross_checks(export, tmp_path):
    for variant, options in VARIANTS.items():
        result = generate_repository([export], RepositoryOptions(**{**options.__dict__, "output": tmp_path / variant}))
        assert set(result.models) == {"tiny", "tiny_preprocess", "tiny_classifier", "tiny_postprocess"}
        files = {p.name for p in (tmp_path / variant / "tiny_classifier" / "1").iterdir()}
        assert files == ({"model.onnx", "model.py"} if variant == "python" else {"model.onnx"})


def test_repository_layout_and_warmup_files(export, tmp_path):
    repo = tmp_path / "repo"
    generate_repository([export], RepositoryOptions(output=repo))
    assert (repo / "tiny" / "1").is_dir()
    assert (repo / "tiny_preprocess" / "1" / "preprocessing.py").is_file()
    assert (repo / "tiny_postprocess" / "1" / "postprocessing.py").is_file()
    # Beside every config whose outputs name it as label_filename (Triton's classification extension reads it).
    for model in ("tiny_postprocess", "tiny_classifier", "tiny"):
        assert (repo / model / "labels.txt").read_text().splitlines() == ["label 0", "label 1", "label 2"]
    sample = (export / "sample.png").read_bytes()
    warm = (repo / "tiny_preprocess" / "warmup" / "sample_image").read_bytes()
    assert int.from_bytes(warm[:4], "little") == len(sample) and warm[4:] == sample  # Triton's BYTES layout
    tensor = np.frombuffer((repo / "tiny_classifier" / "warmup" / "sample_input").read_bytes(), dtype="<f4")
    np.testing.assert_allclose(tensor.reshape(8, 8), np.arange(64).reshape(8, 8) / 255.0, rtol=1e-6)


# ---- versions --------------------------------------------------------------------------------------------------


def test_same_export_keeps_its_version_and_a_new_one_adds_the_next(export, tmp_path):
    repo = tmp_path / "repo"
    assert generate_repository([export], RepositoryOptions(output=repo)).ensembles == {"tiny": 1}
    assert generate_repository([export], RepositoryOptions(output=repo)).ensembles == {"tiny": 1}
    retrained = make_export(tmp_path / "retrained", seed=1)
    assert generate_repository([retrained], RepositoryOptions(output=repo)).ensembles == {"tiny": 2}
    assert sorted(p.name for p in (repo / "tiny_classifier").iterdir() if p.name.isdigit()) == ["1", "2"]
    third = make_export(tmp_path / "third", seed=2)
    generate_repository([third], RepositoryOptions(output=repo, keep_versions=1))
    assert sorted(p.name for p in (repo / "tiny_classifier").iterdir() if p.name.isdigit()) == ["3"]


def test_several_exports_in_one_call(tmp_path):
    first, second = make_export(tmp_path / "a", "alpha"), make_export(tmp_path / "b", "beta", classes=4)
    result = generate_repository([first, second], RepositoryOptions(output=tmp_path / "repo"))
    assert result.ensembles == {"alpha": 1, "beta": 1} and len(result.models) == 8


def test_a_new_export_with_other_outputs_cannot_join_old_versions(export, tmp_path):
    repo = tmp_path / "repo"
    generate_repository([export], RepositoryOptions(output=repo))
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    wider = make_export(tmp_path / "wider", seed=5, classes=4)
    with pytest.raises(RepositoryError, match="cannot be served beside them"):
        generate_repository([wider], RepositoryOptions(output=repo))
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before  # untouched
    assert not list(tmp_path.glob(".repo.tmp-*"))


# ---- classifier execution defaults -----------------------------------------------------------------------------


def classifier_config(manifest: Manifest, options: RepositoryOptions):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = render_configs(manifest, options, ModelNames.for_prefix("tiny"))["tiny_classifier"]
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return config, {key: value.string_value for key, value in config.parameters.items()}


@pytest.mark.parametrize("largest, expected", [
    (112 * 112 * 96 * 4, "1"),  # MobileNetV2-224: one image's activations already exceed the budget
    (64 * 64 * 32 * 4, "8"),  # the digits CNN: 8 images per call
    (1024, "0"),  # a budget above max_batch_size: no split
    (None, "0"),  # an export that does not record it: one call per batch, as before
])
def test_dynamic_batches_are_split_into_cache_sized_onnx_runtime_calls(export, largest, expected):
    from dataclasses import replace

    manifest = Manifest.read(export)
    manifest = replace(manifest, largest_activation_bytes_per_image=largest)
    _, parameters = classifier_config(manifest, RepositoryOptions())
    assert parameters["session_batch_size"] == expected
    _, parameters = classifier_config(manifest, RepositoryOptions(session_batch_size=3))
    assert parameters["session_batch_size"] == "3"  # an explicit --session-batch-size wins


def test_cpu_classifiers_default_to_two_instances_sharing_the_servers_cpus(export):
    manifest = Manifest.read(export)
    config, parameters = classifier_config(manifest, RepositoryOptions())
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, config.instance_group[0].KIND_CPU)]
    assert parameters["intra_op_thread_count"] == "auto"  # resolved by the model from the CPUs it may use
    assert config.dynamic_batching.max_queue_delay_microseconds == 0  # on CPU, waiting for a fuller batch only costs
    config, parameters = classifier_config(manifest, RepositoryOptions(classifier_instances=1, intra_op_threads=3))
    assert config.instance_group[0].count == 1 and parameters["intra_op_thread_count"] == "3"
    config, _ = classifier_config(manifest, RepositoryOptions(instance_kind="gpu", classifier_backend="onnxruntime"))
    assert config.instance_group[0].count == 1 and config.dynamic_batching.max_queue_delay_microseconds == 500
    # The native onnxruntime backend takes numbers only: this machine's cores shared among the instances.
    _, parameters = classifier_config(manifest, RepositoryOptions(classifier_backend="onnxruntime"))
    assert parameters["intra_op_thread_count"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert "session_batch_size" not in parameters


# ---- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (RepositoryOptions(prefix="bad name!"), "model prefix 'bad name!'"),
    (RepositoryOptions(classifier_backend="tensorrt"), "the tensorrt backend runs on GPUs only (add --instance-kind gpu)"),
    (RepositoryOptions(max_batch_size=0), "max batch size 0"),
    (RepositoryOptions(preferred_batch_sizes=(64,)), "preferred batch sizes [64]"),
    (RepositoryOptions(version_policy="newest"), "version policy 'newest'"),
    (RepositoryOptions(session_batch_size=-1), "session batch size must be >= 0"),
    (RepositoryOptions(classifier_instances=0), "--classifier-instances must be at least 1"),
])
def test_invalid_options_are_refused_before_writing(options, message, export, tmp_path):
    from dataclasses import replace

    with pytest.raises(UsageError) as info:
        generate_repository([export], replace(options, output=tmp_path / "repo"))
    assert message in str(info.value)
    assert not (tmp_path / "repo").exists()


def test_missing_manifest_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="manifest.json not found"):
        generate_repository([tmp_path / "empty"], RepositoryOptions(output=tmp_path / "repo"))


def test_manifest_optional_fields_are_typed_and_unknown_keys_are_kept(export, tmp_path):
    import json

    manifest = Manifest.read(export)
    assert manifest.sample_image == "sample.png" and manifest.extra == {}
    data = json.loads((export / "manifest.json").read_text())
    # An older export: no optional fields at all, plus a key from a newer tool.
    older = {k: v for k, v in data.items() if k != "sample_image"} | {"from_the_future": {"x": 1}}
    (export / "manifest.json").write_text(json.dumps(older))
    manifest = Manifest.read(export)
    assert manifest.sample_image is None and manifest.largest_activation_bytes_per_image is None
    assert manifest.extra == {"from_the_future": {"x": 1}}
    manifest.write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == older  # written back as it was read


def test_cli_reports_generation_errors_with_exit_code(tmp_path, capsys):
    code = main(["repo", str(tmp_path / "nowhere"), "--output", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert code == 7 and "does not exist" in err and "triton-deploy export" in err


def test_cross_check_catches_mismatched_ensemble_wiring(export):
    configs = render_configs(Manifest.read(export), RepositoryOptions(), ModelNames.for_prefix("tiny"))
    parsed = {name: validate.parse_config(text, name) for name, text in configs.items()}
    parsed["tiny_classifier"].output[0].data_type = validate.mc.TYPE_FP16
    parsed["tiny_postprocess"].max_batch_size = 4
    del parsed["tiny_preprocess"]
    with pytest.raises(RepositoryError) as info:
        validate.check_models(parsed)
    message = str(info.value)
    assert "step 1 uses model 'tiny_preprocess', which is not in the repository" in message
    assert "'class_scores' is TYPE_FP16 [3] but 'tiny_postprocess' input 'logits' wants TYPE_FP32 [3]" in message
    assert "max_batch_size 32 but member 'tiny_postprocess' only 4" in message


def test_schema_rejects_a_misspelt_field():
    with pytest.raises(RepositoryError, match="rejects it"):
        validate.parse_config('name: "x"\nmax_batch_sise: 4\n', "x/config.pbtxt")
