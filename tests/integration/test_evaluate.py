"""``triton-deploy evaluate`` against the real local server: the accuracy is the fraction the client gets right, the
confusion matrix counts every classified image, undecodable files are named, the gate has its own exit code, a
deliberately worse second model loses the A/B comparison, and bad input is one line with nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from triton_deploy.cli import main
from triton_deploy.clients.evaluate import EvaluateOptions, evaluate
from triton_deploy.server import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    """60 held-out digits drawn at random (sizes, filters, polarity, margins, colour, compression), one file that is
    not an image, and one image placed under two labels (so no model can score 1.0)."""
    from triton_deploy.demo import write_demo_images

    folder = tmp_path_factory.mktemp("eval") / "digits"
    paths, truth = write_demo_images(folder, count=60)
    (folder / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    twin = folder / ("8" if truth[0] != 8 else "3") / "twin.png"
    shutil.copy(paths[0], twin.with_suffix(paths[0].suffix))
    return folder


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_accuracy_is_the_fraction_the_client_gets_right(triton_server, labelled_dir, tmp_path):
    from triton_deploy.clients import ImageClassifier

    output = tmp_path / "eval"
    evaluation = evaluate(EvaluateOptions(data_dir=labelled_dir, output=output, url=triton_server.grpc_url,
                                          protocol="grpc", model="digits"))
    files = [str(p) for p in evaluation.data.files]
    assert len(files) == len(_files(labelled_dir)) == 62
    with ImageClassifier(triton_server.http_url, protocol="http", model="digits") as client:
        outcomes = client.classify_many(files, top_k=1)
    right = [o.prediction.label == o.source.split("/")[-2] for o in outcomes if o.prediction is not None]
    scores = evaluation.scores[0]
    assert scores.accuracy == pytest.approx(np.mean(right)) and scores.images == len(right) == 61
    assert scores.confusion.sum() == 61 and np.trace(scores.confusion) == sum(right)
    for c, row in zip(scores.per_class, scores.confusion):
        assert c.support == row.sum()
    assert scores.top_k[1] == scores.accuracy and list(scores.top_k.values()) == sorted(scores.top_k.values())

    report = json.loads((output / "report.json").read_text())
    model = report["models"][0]
    assert model["accuracy"] == scores.accuracy and model["images"] == 61
    assert [u["file"] for u in model["undecodable"]] == [str(labelled_dir / "1" / "broken.png")]
    assert len(model["misclassified"]) == 61 - sum(right) and model["latency_ms"]["p95"] > 0
    assert model["confidence"]["right"]["images"] == sum(right)
    for name in ("confusion.png", "errors.png"):
        assert (output / name).read_bytes()[:4] == b"\x89PNG"
    assert "broken.png" in (output / "report.md").read_text()


def test_min_accuracy_gate_has_its_own_exit_code_and_still_writes_the_report(triton_server, labelled_dir, tmp_path,
                                                                              capsys):
    base = [str(labelled_dir), "--url", triton_server.grpc_url, "--protocol", "grpc", "--quiet"]
    assert main(["evaluate", *base, "--output", str(tmp_path / "fail"), "--min-accuracy", "1.0"]) == 40
    assert "below --min-accuracy 1" in capsys.readouterr().err
    assert json.loads((tmp_path / "fail" / "report.json").read_text())["passed"] is False
    assert main(["evaluate", *base, "--output", str(tmp_path / "pass"), "--min-accuracy", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


@pytest.mark.parametrize("case, code, message", [
    ("missing folder", 41, "data directory {data} not found"),
    ("empty folder", 41, "no images in {data}"),
    ("unknown label folder", 41, "folder(s) cat in {data} match none of the model's labels (0, 1, 2"),
    ("server down", 30, "nothing listens at 127.0.0.1:{port} (connection refused)"),
    ("not an image classifier ensemble", 32, "'digits_classifier' should have exactly one encoded-image input"),
    ("output exists", 3, "output directory {output} already exists"),
])
def test_bad_input_is_one_line_and_nothing_is_written(case, code, message, triton_server, labelled_dir, tmp_path,
                                                      capsys):
    data, output, url, model = tmp_path / "data", tmp_path / "out", triton_server.grpc_url, "digits"
    (port,) = free_ports(1)
    if case == "empty folder":
        (data / "3").mkdir(parents=True)
    elif case == "unknown label folder":
        shutil.copytree(labelled_dir, data)
        (data / "cat").mkdir()
    elif case != "missing folder":
        data = labelled_dir
    if case == "server down":
        url = f"127.0.0.1:{port}"
    if case == "not an image classifier ensemble":
        model = "digits_classifier"
    if case == "output exists":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
    result = main(["evaluate", str(data), "--output", str(output), "--url", url, "--protocol", "grpc", "--model", model,
                   "--ready-timeout", "1", "--retries", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert result == code
    assert len(err) == 1 and message.format(data=data, port=port, output=output) in err[0]
    if case == "output exists":
        assert [p.name for p in output.iterdir()] == ["keep.txt"]
    else:
        assert not output.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


# ---- A/B: the digits model against a deliberately damaged copy -------------------------------------------------


@pytest.fixture(scope="module")
def ab_server(digits_export, tmp_path_factory):
    """Both layouts ``optimize --publish`` makes: ``digits`` with classifier version 1 (the trained model) and version
    2 (its logits layer drowned in noise; served by the ensemble as the latest), and the trained model again as the
    sibling ensemble ``digits_good``."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    from triton_deploy.repository.render import RepositoryOptions
    from triton_deploy.repository.writer import generate_repository
    from triton_deploy.server import ServerOptions, TritonServer

    root = tmp_path_factory.mktemp("ab")
    worse = root / "worse"
    shutil.copytree(digits_export, worse)
    model = onnx.load(str(worse / "model.onnx"))
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.ndim == 2 and weights.shape[-1] == 10:  # the final Dense kernel
            noisy = weights + rng.normal(0, 1.5 * weights.std(), weights.shape).astype(weights.dtype)
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, str(worse / "model.onnx"))
    manifest = json.loads((worse / "manifest.json").read_text())
    manifest["model_sha256"] = hashlib.sha256((worse / "model.onnx").read_bytes()).hexdigest()
    (worse / "manifest.json").write_text(json.dumps(manifest))

    repo = root / "repo"
    options = RepositoryOptions(output=repo, classifier_instances=1, version_policy="all")
    generate_repository([digits_export], options)
    generate_repository([worse], options)  # the same model name: classifier version 2
    generate_repository([digits_export], RepositoryOptions(output=repo, classifier_instances=1, prefix="digits_good"))
    http, grpc, metrics = free_ports(3)
    with TritonServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                    log_file=root / "triton.log", exit_timeout_s=5)) as server:
        yield server


@pytest.mark.parametrize("layout", ["siblings", "versions"])
def test_a_worse_model_loses_the_ab_comparison(layout, ab_server, labelled_dir, tmp_path):
    output = tmp_path / "ab"
    if layout == "siblings":
        pair = {"model": "digits_good", "compare": "digits"}
        names = ("digits_good", "digits")
    else:
        pair = {"model": "digits", "model_version": "1", "compare_version": "2", "admin_key": ab_server.admin_key}
        names = ("digits_v1", "digits_v2")
    evaluation = evaluate(EvaluateOptions(data_dir=labelled_dir, output=output, url=ab_server.grpc_url,
                                          protocol="grpc", batch_size=4, **pair))
    good, worse = evaluation.runs
    assert (good.model, worse.model) == names
    c = evaluation.comparison
    assert c.images == 61 and c.accuracy_a == evaluation.scores[0].accuracy
    assert c.accuracy_a > c.accuracy_b and c.p_value < 0.05 and c.only_a_right > c.only_b_right
    assert c.verdict(*names).startswith(f"{names[0]} is more accurate")
    predicted = [(a.prediction.class_id, b.prediction.class_id) for a, b in zip(good.outcomes, worse.outcomes)
                 if a.prediction is not None and b.prediction is not None]
    assert len(c.disagreements) == sum(x != y for x, y in predicted) and c.agreement < 1.0
    assert all(run.latency_ms(50) > 0 and run.latency_ms(95) >= run.latency_ms(50) for run in evaluation.runs)
    report = json.loads((output / "report.json").read_text())
    assert report["comparison"]["model_b"] == names[1] and len(report["comparison"]["disagreements"]) == len(
        c.disagreements)
    assert (output / f"confusion-{names[1]}.png").is_file() and "## A/B" in (output / "report.md").read_text()


# (A version called without the admin key used to fail for want of the classifier's configuration; the configuration
# is open now, as Triton's own clients expect, so only a version the server does not serve is refused.)
@pytest.mark.parametrize("version, key, code, said, hint", [
    ("9", True, 31, "does not serve version 9 of 'digits_classifier'", "version policy"),
    ("9", False, 31, "does not serve version 9 of 'digits_classifier'", "version policy"),
])
def test_a_model_version_that_cannot_be_called_gets_a_hint_evaluate_can_follow(version, key, code, said, hint, ab_server,
                                                                               labelled_dir, tmp_path, capsys):
    argv = ["evaluate", str(labelled_dir), "--output", str(tmp_path / "out"), "--url", ab_server.grpc_url,
            "--protocol", "grpc", "--model-version", version, "--quiet"]
    assert main(argv + (["--admin-key", ab_server.admin_key] if key else [])) == code
    err = capsys.readouterr().err
    assert said in err and hint in err and "--manifest" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_mcnemar_exact_test_matches_the_binomial_by_hand():
    from triton_deploy.clients.scoring import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 6 discordant, all one way: 2 * 0.5^6
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
