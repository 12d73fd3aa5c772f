"""The optimiser knows no model: it reads images through the export's dataset record, gates on agreement with FP32
as well as accuracy, reports a variant that fails instead of losing the others, and its modules import in one
direction. Tiny real Keras models exported with their own ``--samples``; no digits training."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from triton_deploy.cli import build_parser, main
from triton_deploy.errors import ManifestError, UsageError
from triton_deploy.export import datasets
from triton_deploy.optimize.cli import VariantsFailedError
from triton_deploy.optimize.options import OptimizeOptions
from triton_deploy.optimize.run import optimize
from triton_deploy.spec import DatasetRecord, Manifest

OPTIMIZE = Path(__file__).resolve().parents[2] / "optimize"
QUICK = {"bench_seconds": 0.05, "bench_rounds": 1}


def colour_samples(folder: Path, *, at_chance: bool) -> None:
    """Six 16x16 images per label, each a dominant colour; ``at_chance``: every label folder holds each colour twice,
    so a model that names the colour scores exactly 1/3."""
    from PIL import Image

    for li, label in enumerate(("red", "green", "blue")):
        (folder / "samples" / label).mkdir(parents=True)
        for i in range(6):
            channel = (li + i) % 3 if at_chance else li
            pixels = np.full((16, 16, 3), 20 + i, dtype=np.uint8)
            pixels[..., channel] = 230
            Image.fromarray(pixels).save(folder / "samples" / label / f"{i}.png")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")


def export(folder: Path, model: Path, *extra: str) -> Path:
    out = folder / "export"
    assert main(["export", "--keras-model", str(model), "--labels", str(folder / "labels.txt"), "--samples",
                 str(folder / "samples"), "--scale", "1", "--output", str(out), "-q", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def near_chance_export(tmp_path_factory) -> Path:
    """Names an image's dominant colour with logits 100 + 0.001 x colour: FP32 tells the colours apart, INT8 output
    ranges cannot. Its samples are labelled so that naming the colour is right one time in three."""
    import keras

    folder = tmp_path_factory.mktemp("near_chance")
    inputs = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))))
    dense.set_weights([np.eye(3, dtype=np.float32) * 1e-3, np.full(3, 100.0, dtype=np.float32)])
    model.save(folder / "tie.keras")
    colour_samples(folder, at_chance=True)
    return export(folder, folder / "tie.keras", "--allow-chance-accuracy")


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory) -> tuple[Path, Path]:
    """A user's small CNN (1x1 convolution, 8 filters, three of them carry the colours) and its labelled samples."""
    import keras

    folder = tmp_path_factory.mktemp("conv")
    inputs = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(8, 1, name="conv")
    dense = keras.layers.Dense(3)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(conv(keras.layers.Rescaling(1 / 255)(inputs))))
    model = keras.Model(inputs, dense(x))
    kernel = np.random.default_rng(0).normal(0, 0.01, (1, 1, 3, 8)).astype(np.float32)
    kernel[0, 0, :, :3] = np.eye(3)
    head = np.zeros((8, 3), dtype=np.float32)
    head[:3] = np.eye(3) * 4
    conv.set_weights([kernel, np.zeros(8, dtype=np.float32)])
    dense.set_weights([head, np.zeros(3, dtype=np.float32)])
    model.save(folder / "cnn.keras")
    colour_samples(folder, at_chance=False)
    return export(folder, folder / "cnn.keras"), folder


# ---- 24.1: agreement with FP32 is gated as well as accuracy ---------------------------------------------------


@pytest.mark.slow
def test_a_variant_at_chance_accuracy_that_changes_fp32s_answers_is_refused(near_chance_export, tmp_path):
    report = optimize(OptimizeOptions(near_chance_export, tmp_path / "o", variants=("fp32_slim", "int8_static"),
                                      **QUICK))
    int8 = report.variant("int8_static")
    assert report.variants[0].accuracy == pytest.approx(1 / 3) and int8.accuracy_drop == pytest.approx(0.0)
    assert not int8.passed and not int8.failed and int8.agreement < 0.5
    assert "top-1 agreement with FP32" in int8.reason and not (tmp_path / "o" / "int8_static").exists()
    assert report.recommendation["variant"] != "int8_static"
    assert all(r["variant"] != "int8_static" for r in report.recommendations.values())
    assert report.gate["min_agreement"] == 0.95
    assert "top-1 agreement with FP32 at least 0.95" in (tmp_path / "o" / "report.md").read_text()
    lowered = optimize(OptimizeOptions(near_chance_export, tmp_path / "o2", variants=("int8_static",),
                                       min_agreement=0.3, **QUICK))  # the threshold is the user's to set
    assert lowered.variant("int8_static").passed and (tmp_path / "o2" / "int8_static").is_dir()


def test_min_agreement_outside_0_1_names_the_flag(tmp_path):
    with pytest.raises(UsageError, match="--min-agreement"):
        OptimizeOptions(tmp_path, tmp_path / "o", min_agreement=1.5).check()


# ---- 24.2: a failing TFLite variant is reported, the rest written and published -------------------------------


@pytest.mark.slow
def test_a_tflite_variant_that_fails_validation_is_reported_and_the_rest_published(near_chance_export, tmp_path,
                                                                                     capsys):
    out, repo = tmp_path / "o", tmp_path / "repo"
    code = main(["optimize", str(near_chance_export), "-o", str(out), "--variants", "fp32_slim", "--tflite",
                 "--publish", str(repo), "--bench-seconds", "0.05", "--bench-rounds", "1", "-q"])
    err = capsys.readouterr().err
    assert code == VariantsFailedError.exit_code == 24
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "tflite_int8" in err and ".work" not in err and ".o.tmp-" not in err  # no staging or scratch path
    optimize_flags = {flag for action in _subparser("optimize")._actions for flag in action.option_strings}
    assert set(re.findall(r"--[a-z][a-z-]+", err)) <= optimize_flags  # hints name flags optimize has
    report = json.loads((out / "report.json").read_text())
    failed = next(v for v in report["variants"] if v["name"] == "tflite_int8")
    assert failed["failed"] and not failed["passed"] and "against TensorFlow" in failed["reason"]
    assert failed["agreement"] < 0.9 and failed["size_bytes"] > 0  # its figures, measured all the same
    assert not (out / "tflite_int8").exists() and (out / "fp32_slim" / "model.onnx").is_file()
    assert "fp32_slim" in report["published"]["classifier_versions"].values()
    assert "**tflite_int8 failed**" in (out / "report.md").read_text()


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if getattr(a, "choices", None) and name in a.choices)
    return action.choices[name]


# ---- issue 22.2: a user's model goes down no digits path --------------------------------------------------------


@pytest.mark.slow
def test_optimising_a_user_model_with_samples_takes_no_digits_branch(conv_export, tmp_path, monkeypatch):
    export_dir, folder = conv_export
    from triton_deploy.export import digits

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the optimiser reached for the digits dataset on a user's model")

    for name in ("load_digits_data", "to_model_input", "augmented_training_set", "digit_image"):
        monkeypatch.setattr(digits, name, forbidden)
    report = optimize(OptimizeOptions(export_dir, tmp_path / "o", variants=("fp16", "int8_static", "pruned_50"),
                                      **QUICK))
    assert [v.name for v in report.variants if v.passed] == ["fp32", "fp16", "int8_static", "pruned_50"]
    assert report.gate["evaluation_images"] == 18 and report.variants[0].accuracy == 1.0
    samples = str((folder / "samples").resolve())
    assert report.variant("int8_static").details["calibration_source"] == samples
    pruned = report.variant("pruned_50")
    assert pruned.details["widths"] == {"conv": [8, 4]} and pruned.details["fine_tune_epochs"] == 0
    assert "no labelled training images" in pruned.details["note"]
    assert isinstance(Manifest.read(export_dir).dataset, DatasetRecord)


@pytest.mark.slow
def test_distilling_a_user_model_is_refused_before_any_work(conv_export, tmp_path):
    with pytest.raises(UsageError, match="distilled trains on the export's labelled training images.*--distill"):
        optimize(OptimizeOptions(conv_export[0], tmp_path / "o", variants=("fp16", "distilled"), **QUICK))
    assert not (tmp_path / "o").exists()


def test_an_export_without_images_cannot_calibrate_or_train():
    nothing = datasets.NoImages()
    assert not nothing.calibrates and not nothing.trains and nothing.calibration(None, 8, 0) is None


# ---- the manifest's dataset record --------------------------------------------------------------------------


def test_dataset_records_written_by_earlier_exports_read_and_write_back_unchanged():
    digits_record = {"name": "sklearn-digits", "image_size": [64, 64], "seed": 0, "test_fraction": 0.25,
                     "train_size": 1347, "heldout_size": 450, "heldout_indices": [3, 7, 11]}
    samples_record = {"name": "samples", "path": "/data/flowers", "labelled": True}
    for record in (digits_record, samples_record):
        typed = DatasetRecord.from_dict(record)
        assert typed.to_dict() == record
    assert DatasetRecord.from_dict(digits_record).heldout_indices == (3, 7, 11)
    assert DatasetRecord.from_dict(samples_record).source == "samples"


def test_a_malformed_dataset_record_is_one_line_naming_the_manifest(near_chance_export, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(near_chance_export, broken)
    data = json.loads((broken / "manifest.json").read_text())
    data["dataset"] = ["not", "a", "record"]
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"manifest.json is malformed: .*dataset") as info:
        Manifest.read(broken)
    assert "\n" not in str(info.value)


# ---- issue 22.2/22.3: the optimiser's modules --------------------------------------------------------------------


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(OPTIMIZE.glob("*.py"))}


def test_no_optimize_module_imports_the_digits_source_or_tests_a_dataset_name():
    names = set(datasets.SOURCES)  # the dataset sources' names, as manifests record them
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = {f"{node.module}.{alias.name}" for alias in node.names} | {node.module or ""}
                assert not any(i.endswith("export.digits") for i in imported), f"optimize/{module}.py imports digits"
            elif isinstance(node, ast.Import):
                assert not any(a.name.endswith("export.digits") for a in node.names), module
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"optimize/{module}.py names the dataset {node.value!r}"
            elif isinstance(node, ast.Attribute) and node.attr == "dataset":
                pytest.fail(f"optimize/{module}.py reads manifest.dataset itself instead of export.datasets")
            elif isinstance(node, ast.FunctionDef):
                assert "digits" not in node.name, f"optimize/{module}.py defines {node.name}"


def _internal_imports(tree: ast.Module) -> list[tuple[ast.stmt, str, bool]]:
    """(node, optimize module imported, inside a function) for every import of a sibling module, at run time (not
    under ``if TYPE_CHECKING:``)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                targets = [child.module] if child.module else [a.name for a in child.names]
                found.extend((child, t.split(".")[0], in_function) for t in targets)
            visit(child, inner)

    visit(tree, False)
    return found


def test_optimize_modules_import_in_one_direction_with_no_late_import_hiding_a_cycle():
    modules = _modules()
    graph = {name: {target for _, target, _ in _internal_imports(tree)} for name, tree in modules.items()}
    order: list[str] = []
    state: dict[str, str] = {}

    def walk(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join([*path, name])}"
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            walk(target, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in graph:
        walk(name, [])
    assert order.index("base") < order.index("variants") < order.index("run")


def test_every_late_import_in_optimize_says_why():
    """Imports inside functions are only there to keep heavy libraries off start-up, and each run says so."""
    for module, tree in _modules().items():
        lines = (OPTIMIZE / f"{module}.py").read_text().splitlines()
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            imports = [n for n in function.body if isinstance(n, ast.Import | ast.ImportFrom)]
            if imports:
                first = imports[0].lineno
                block = lines[first - 2:imports[-1].end_lineno or first]
                assert any("#" in line for line in block), f"optimize/{module}.py:{first} late import without why"


# ---- 24.19: the Pareto plot stays readable when variants sit together ----------------------------------------------


def test_close_points_get_labels_that_overlap_nothing_and_stay_in_the_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from triton_deploy.optimize.plot import _place_labels

    items = [("fp32", 2200, 0.9911), ("fp32_slim", 2210, 0.9911), ("tflite_fp32", 2190, 0.9911),
             ("int8_static", 5200, 0.9911), ("int8_symmetric", 5100, 0.9911), ("tflite_int8", 5300, 0.9911),
             ("pruned_50", 9000, 0.9955), ("pruned_50_int8_static", 9100, 0.9955),
             ("pruned_50_int8_symmetric", 9050, 0.9955)]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.set_xscale("log")
    ax.set_xlim(1500, 14000)
    ax.set_ylim(0.99, 0.997)
    ax.scatter([x for _, x, _ in items], [y for _, _, y in items])
    fig.canvas.draw()
    _place_labels(ax, items)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    frame = ax.get_window_extent(renderer)
    plt.close(fig)
    assert len(boxes) == len(items)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        assert not any(a.overlaps(b) for b in boxes[i + 1:])


def test_log_axis_ticks_are_few_plain_numbers_even_within_one_decade():
    from triton_deploy.optimize.plot import _plain, _ticks

    assert [_plain(t) for t in _ticks(300, 12000)] == ["500", "1k", "2k", "5k", "10k"]
    narrow = _ticks(740, 1350)
    assert 3 <= len(narrow) <= 8 and all(740 <= t <= 1350 for t in narrow)
    assert [_plain(t) for t in _ticks(0.06, 1.3)] == ["0.1", "0.2", "0.5", "1"]


def test_the_gate_legend_says_point_not_pts():
    from triton_deploy.optimize.plot import _points_word

    assert _points_word(1) == "1 point" and _points_word(1.5) == "1.5 points"
