"""``triton-deploy export`` as one function: load or train -> convert -> check -> parity -> accuracy -> write.

Everything is written into a temporary sibling of the output directory and moved into place only when every check
has passed, so a failed export leaves nothing behind (and an existing export untouched).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from triton_deploy import __version__
from triton_deploy.contract import IMAGE_SUFFIXES
from triton_deploy.errors import ModelSourceError, Problem, raise_problems
from triton_deploy.fsutil import atomic_directory, check_output_dir
from triton_deploy.monitoring.model_metrics import reference_distributions
from triton_deploy.postprocessing import softmax
from triton_deploy.preprocessing import ImageDecodeError, ImageTransform
from triton_deploy.progress import Reporter
from triton_deploy.spec import DatasetRecord, Manifest, Reference, Robustness, TensorSpec
from triton_deploy.tfquiet import load_tensorflow

from . import convert, digits, graph, robustness, sources, tflite, validate

SAMPLE_IMAGE = "sample.png"
KERAS_FILE = "model.keras"


@dataclass(frozen=True)
class ExportOptions:
    output: Path
    model: str = "digits"  # built-in model; ignored when keras_model, saved_model or arch is set
    keras_model: Path | None = None
    saved_model: Path | None = None
    arch: str | None = None
    weights: Path | None = None
    image_size: int | None = None
    name: str | None = None
    labels_file: Path | None = None
    samples: Path | None = None
    output_kind: str = "auto"  # auto | logits | probabilities
    opset: int = 17
    nchw: bool = False
    atol: float = 1e-4
    min_agreement: float = 1.0
    input_name: str = "image"
    output_name: str | None = None  # default: "logits" or "probabilities"
    epochs: int = digits.EPOCHS  # passes over the augmented training digits
    seed: int = 0
    force: bool = False
    allow_chance_accuracy: bool = False  # write an export whose measured accuracy guessing would reach
    tflite: bool = False  # also write model.tflite (float32), validated with LiteRT
    transform_overrides: dict = field(default_factory=dict)  # scale / mean / std / channel_order from flags

    def problems(self) -> list[Problem]:
        """Every problem with these options, without raising."""
        problems: list[Problem] = []
        chosen = [flag for flag, value in (("--keras-model", self.keras_model), ("--saved-model", self.saved_model),
                                           ("--arch", self.arch)) if value is not None]
        if len(chosen) > 1:
            problems.append((f"{' and '.join(chosen)} were both given; export one model per run",
                             "keep one of --model/--keras-model/--saved-model/--arch"))
        if not chosen and self.model != "digits":
            problems.append((f"unknown built-in model {self.model!r}", "--model takes: digits"))
        if self.tflite and self.saved_model is not None:
            problems.append(("--tflite converts a Keras model; a SavedModel source has none",
                             "drop --tflite, or export the Keras model with --keras-model"))
        if self.weights is not None and self.arch is None:
            problems.append(("--weights applies to --arch models only", "drop --weights or add --arch"))
        if not 7 <= self.opset <= 21:
            problems.append((f"opset {self.opset} is outside the supported range 7-21", "check --opset"))
        if self.atol <= 0 or not 0 < self.min_agreement <= 1:
            problems.append(("--atol must be > 0 and --min-agreement in (0, 1]", "check --atol / --min-agreement"))
        if self.output_kind not in ("auto", "logits", "probabilities"):
            problems.append((f"unknown output kind {self.output_kind!r}", "--outputs takes auto|logits|probabilities"))
        for flag, name in (("--input-name", self.input_name), ("--output-name", self.output_name),
                           ("--name", self.name)):
            if name is not None and not _is_identifier(name):
                problems.append((f"{flag} {name!r} must be letters, digits and underscores, starting with a letter",
                                 f"check {flag}"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())


@dataclass(frozen=True)
class ExportResult:
    output: Path
    manifest: Manifest
    accuracy_note: str | None = None  # why there is no accuracy, when there is none
    skipped_samples: tuple[tuple[str, str], ...] = ()  # (file, why) of --samples images that could not be read

    def summary(self) -> dict:
        m = self.manifest
        return {
            "output": str(self.output),
            "name": m.name,
            "model": str(self.output / m.model_file),
            "input": m.input.to_dict(),
            "output_tensor": m.output.to_dict() | {"kind": m.output_kind},
            "accuracy": m.accuracy,
            "accuracy_note": self.accuracy_note,
            "skipped_samples": [{"file": f, "reason": r} for f, r in self.skipped_samples],
            "parity": {"max_abs_diff": m.parity.max_abs_diff, "top1_agreement": m.parity.top1_agreement,
                       "atol": m.parity.atol, "samples": m.parity.samples},
            "flops_per_image": m.flops_per_image,
            "robustness_worst": m.robustness.to_dict()["worst"] if m.robustness is not None else None,
            "model_sha256": m.model_sha256,
        } | ({"tflite": m.tflite} if m.tflite else {})


def export_model(options: ExportOptions, reporter: Reporter | None = None) -> ExportResult:
    reporter = reporter or Reporter(quiet=True)
    options.check()
    check_output_dir(options.output, force=options.force)  # fail before minutes of training, not after
    with reporter.step("Loading TensorFlow"):
        load_tensorflow()

    model = _load(options, reporter)
    transform = ImageTransform.from_dict(model.transform.to_dict() | options.transform_overrides
                                         | ({"layout": "NCHW"} if options.nchw else {}))
    labels = _labels(options, model)
    samples, sample_labels, sample_png, accuracy_note, skipped = _samples(options, model, transform, labels)

    with atomic_directory(options.output, force=options.force) as staging:
        first_outputs = model.predict(samples[:4])
        kind = options.output_kind if options.output_kind != "auto" else (
            model.output_kind or ("probabilities" if validate.looks_like_probabilities(first_outputs) else "logits"))
        output_name = options.output_name or kind
        model_path = staging / "model.onnx"
        plan = validate.ParityPlan(atol=options.atol, min_agreement=options.min_agreement,
                                   batch_sizes=(1, min(16, len(samples))))
        session, parity = convert_and_check(model, model_path, samples, plan, input_name=options.input_name,
                                            output_name=output_name, opset=options.opset, nchw=options.nchw,
                                            reporter=reporter)
        accuracy = reference = suite = None
        if sample_labels is not None:
            with reporter.step(f"Measuring held-out accuracy on {len(samples)} images"):
                outputs = validate.run_batches(session, samples, nchw=options.nchw)
                accuracy = validate.accuracy(outputs, sample_labels)
            if not options.allow_chance_accuracy:
                validate.check_above_chance(accuracy, sample_labels, model.num_classes, transform)
            # The drift score's baseline: how the model answers held-out images. Only labelled samples are held-out
            # data that stands for real traffic; the 32 parity images of an unlabelled export do not.
            probabilities = softmax(outputs.astype(np.float32)) if kind == "logits" else outputs
            reference = Reference.from_dict(reference_distributions(probabilities))
            suite = _robustness(options, model, transform, session, sample_labels, reporter, skipped)
        (staging / SAMPLE_IMAGE).write_bytes(sample_png)
        keras_file = None
        if model.keras_model is not None:  # the source pruning and TFLite conversion start from
            model.keras_model.save(staging / KERAS_FILE)
            keras_file = KERAS_FILE
        tflite_record = None
        if options.tflite:
            with reporter.step(f"Converting to TFLite and validating with LiteRT on {len(samples)} images"):
                tflite_record = tflite.write(model.keras_model, staging, samples, model.predict(samples),
                                             atol=options.atol, min_agreement=options.min_agreement,
                                             labels=sample_labels)
        manifest = Manifest(
            name=options.name or model.name,
            input=TensorSpec(options.input_name, (-1, *transform.input_dims), "FP32", layout=transform.layout),
            output=TensorSpec(output_name, (-1, model.num_classes), "FP32"),
            output_kind=kind,
            preprocessing=transform,
            labels=labels,
            opset=options.opset,
            model_sha256=hashlib.sha256(model_path.read_bytes()).hexdigest(),
            parity=parity,
            versions=_versions(),
            source=model.source,
            accuracy=accuracy,
            dataset=_dataset_record(options, model, sample_labels, skipped),
            flops_per_image=2 * model.extra["multiply_adds_per_image"] if "multiply_adds_per_image" in model.extra
            else None,
            created_by=f"triton-deploy {__version__}",
            reference=reference,
            robustness=suite,
            sample_image=SAMPLE_IMAGE,
            largest_activation_bytes_per_image=graph.largest_activation_bytes(model_path),
            multiply_adds_per_image=model.extra.get("multiply_adds_per_image"),
            keras_file=keras_file,
            tflite=tflite_record,
        )
        manifest.write(staging)
    return ExportResult(Path(options.output), manifest, accuracy_note, tuple((str(p), r) for p, r in skipped))


def convert_and_check(model: sources.LoadedModel, path: Path, samples: np.ndarray, plan: validate.ParityPlan, *,
                      input_name: str, output_name: str, opset: int, nchw: bool, reporter: Reporter | None = None):
    """The checks every ONNX file this project writes passes: tf2onnx conversion, the ONNX checker with strict
    shape inference, and TensorFlow vs ONNX Runtime parity on ``samples`` (NHWC floats). Returns (session, parity).

    Used by ``export`` and by every optimisation that makes a new network (pruning, distillation)."""
    reporter = reporter or Reporter(quiet=True)
    with reporter.step(f"Converting to ONNX (opset {opset}, {'NCHW' if nchw else 'NHWC'})"):
        proto = convert.convert(model, input_name=input_name, output_name=output_name, opset=opset, nchw=nchw)
        onnx.save(proto, str(path))
    with reporter.step("Checking the ONNX graph (checker, shape inference)"):
        validate.check_graph(path)
    session = validate.onnx_session(path)
    with reporter.step(f"Checking parity TensorFlow vs ONNX Runtime at batch {plan.batch_sizes}"):
        parity = validate.check_parity(model, session, samples, plan, nchw=nchw)
    return session, parity


def export_like(model: sources.LoadedModel, manifest: Manifest, path: Path, samples: np.ndarray,
                reporter: Reporter | None = None):
    """A new network made from an export (pruned, distilled) converted and checked the way that export was: same
    tensor names, opset, layout and parity tolerance. Returns the new model's TensorFlow vs ONNX parity."""
    plan = validate.ParityPlan(atol=manifest.parity.atol, batch_sizes=(1, min(16, len(samples))))
    _, parity = convert_and_check(model, path, samples, plan, input_name=manifest.input.name,
                                  output_name=manifest.output.name, opset=manifest.opset,
                                  nchw=manifest.preprocessing.layout == "NCHW", reporter=reporter)
    return parity


def _is_identifier(name: str) -> bool:
    return bool(name) and name[0].isalpha() and all(c.isalnum() or c == "_" for c in name) and len(name) <= 64


def _load(options: ExportOptions, reporter: Reporter) -> sources.LoadedModel:
    if options.keras_model is not None:
        with reporter.step(f"Loading Keras model {options.keras_model}"):
            return sources.from_keras_file(options.keras_model)
    if options.saved_model is not None:
        with reporter.step(f"Loading SavedModel {options.saved_model}"):
            return sources.from_saved_model(options.saved_model)
    if options.arch is not None:
        with reporter.step(f"Building {options.arch} ({'random weights' if options.weights is None else 'weights'})"):
            return sources.from_architecture(options.arch, image_size=options.image_size, weights=options.weights,
                                             seed=options.seed)
    data = digits.load_digits_data(seed=options.seed)
    drawn = len(data.train_indices) * digits.AUGMENTED_PER_IMAGE
    steps = digits.training_steps(data, options.epochs)
    with reporter.bars((drawn, f"Drawing {digits.AUGMENTED_PER_IMAGE} renderings of each training digit"),
                       (steps, f"Training the digits CNN ({options.epochs} passes)")) as (draw_bar, train_bar):
        return sources.from_digits(seed=options.seed, epochs=options.epochs, progress=_BatchCallback(train_bar),
                                   render_progress=draw_bar.advance)


def _BatchCallback(bar):  # noqa: N802  (a factory: keras is imported lazily)
    # TensorFlow: seconds to import, paid only by the commands that build, train or convert a model
    import keras

    class BatchProgress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            bar.advance(1, status=f"loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}")

    return BatchProgress()


def _labels(options: ExportOptions, model: sources.LoadedModel) -> tuple[str, ...]:
    if options.labels_file is None:
        return model.labels
    try:
        labels = tuple(line.strip() for line in Path(options.labels_file).read_text(encoding="utf-8").splitlines()
                       if line.strip())
    except OSError as exc:
        raise ModelSourceError(f"cannot read labels file {options.labels_file}: {exc.strerror}",
                               hint="check --labels") from None
    if len(labels) != model.num_classes:
        raise ModelSourceError(f"{options.labels_file} has {len(labels)} labels but the model has "
                               f"{model.num_classes} classes", hint="check --labels")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ModelSourceError(f"{options.labels_file} repeats labels {duplicates}; each class needs its own",
                               hint="check --labels")
    return labels


Skipped = list[tuple[Path, str]]  # --samples files that could not be read, and why


def _samples(options: ExportOptions, model: sources.LoadedModel, transform: ImageTransform,
             labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None, bytes, str | None, Skipped]:
    """Float NHWC samples for parity and accuracy, their labels if known, one encoded sample image (PNG), why
    the labels are not known when they are not, and the sample files skipped as unreadable."""
    nhwc = ImageTransform.from_dict(transform.to_dict() | {"layout": "NHWC"})  # TF always takes NHWC
    if options.samples is not None:
        return _samples_from_dir(Path(options.samples), nhwc, labels)
    data = model.dataset or digits.load_digits_data(seed=options.seed)
    images, heldout_labels = data.split("heldout")
    known: np.ndarray | None = heldout_labels
    note = None
    if model.dataset is None:
        images, known = images[:32], None  # real digit images, rendered at the model's size, for parity only
        note = "no --samples: parity ran on rendered digits; --samples DIR with one sub-folder per label gives one"
    pixels = np.stack([nhwc.resize(digits.digit_image(image)) for image in images])
    return nhwc.normalise(pixels), known, _png(digits.digit_image(images[0])), note, []


def _dataset_record(options: ExportOptions, model: sources.LoadedModel, sample_labels,
                    skipped: Skipped) -> DatasetRecord | None:
    """What the accuracy was measured on, so ``optimize`` evaluates and calibrates on the same images (and which
    sample files could not be read, so the accuracy says what it covered)."""
    if options.samples is not None:
        return DatasetRecord(source="samples", path=str(Path(options.samples).resolve()),
                             labelled=sample_labels is not None,
                             extra={"skipped": [{"file": str(p), "reason": r} for p, r in skipped]})
    return model.dataset.record() if model.dataset is not None else None


def load_sample_folder(directory: Path, transform: ImageTransform,
                       labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None, bytes, str | None]:
    """Model inputs from the images under ``directory``, their class indices when every image sits in a folder named
    after a label, one sample as PNG, and why there are no labels when there are none."""
    return _samples_from_dir(directory, transform, labels)[:4]


def _robustness(options: ExportOptions, model: sources.LoadedModel, transform: ImageTransform, session,
                labels: np.ndarray, reporter: Reporter, skipped: Skipped) -> Robustness:
    """The robustness suite: held-out digits drawn under every digit condition, or the user's labelled samples
    under the conditions any image can meet."""
    predict = validate.onnx_predictor(session, nchw=options.nchw)
    if options.samples is not None:
        unreadable = {path for path, _ in skipped}
        files = [path for path in _sample_files(Path(options.samples)) if path not in unreadable]
        with reporter.step(f"Robustness suite: {len(robustness.SAMPLE_CONDITIONS)} conditions on {len(files)} "
                           "samples"):
            images = [_open_sample(path) for path in files]
            return robustness.evaluate_samples(predict, images, labels, transform,
                                               data=f"samples in {options.samples}")
    assert model.dataset is not None
    digit_images, heldout_labels = model.dataset.split("heldout")
    conditions = robustness.DIGIT_CONDITIONS
    with reporter.bar(len(conditions), f"Robustness suite: {len(digit_images)} held-out digits under each "
                      "condition") as bar:
        return robustness.evaluate_digits(
            predict, digit_images, heldout_labels, transform, seed=options.seed, data="held-out sklearn digits",
            progress=lambda name: bar.advance(1, status=name))


def _sample_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ModelSourceError(f"samples directory {directory} not found", hint="check --samples")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ModelSourceError(f"no images in {directory}", hint="--samples needs .png/.jpg/... files")
    return files


def _open_sample(path: Path):
    """A sample as a PIL image at its own size, in a mode PNG can store (the suite re-saves it)."""
    with Image.open(path) as image:
        image.load()
        return image if image.mode in ("L", "LA", "RGB", "RGBA", "P") else image.convert("RGB")


def _samples_from_dir(directory: Path, transform: ImageTransform,
                      labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None, bytes, str | None, Skipped]:
    """The rule of ``classify`` and ``evaluate``: an image that cannot be read is skipped and named (here in the
    result, the manifest's dataset record and on stderr), the others are used; only a folder with no readable image
    is refused, naming every file."""
    arrays, classes, files, skipped = [], [], [], []
    index = {label: i for i, label in enumerate(labels)}
    for path in _sample_files(directory):
        try:
            arrays.append(transform.decode(path.read_bytes()))
        except (ImageDecodeError, OSError) as exc:
            skipped.append((path, str(exc)))
            continue
        files.append(path)
        classes.append(index.get(path.parent.name) if path.parent != directory else None)
    if not arrays:
        raise ModelSourceError(f"none of the {len(skipped)} images in {directory} can be read: "
                               + "; ".join(f"{p}: {r}" for p, r in skipped), hint="check --samples")
    known = None if any(c is None for c in classes) else np.asarray(classes)
    note = None if known is not None else _why_unlabelled(directory, files, labels)
    return transform.normalise(np.stack(arrays)), known, _png_from_array(arrays[0]), note, skipped


def _why_unlabelled(directory: Path, files: list[Path], labels: tuple[str, ...]) -> str:
    """Why samples in ``directory`` give no accuracy: images outside label folders, or folders that are no label."""
    loose = [p for p in files if p.parent == directory]
    if loose:
        return (f"{len(loose)} of {len(files)} images in --samples {directory} sit directly in it, not in one "
                f"sub-folder per label")
    strangers = sorted({p.parent.name for p in files} - set(labels))
    shown = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
    return (f"--samples folders {', '.join(strangers[:5])}{', ...' if len(strangers) > 5 else ''} are not labels "
            f"(labels: {shown}; set them with --labels)")


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_from_array(array: np.ndarray) -> bytes:
    return _png(Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array))


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "tensorflow-cpu" in versions:
        versions.setdefault("tensorflow", versions.pop("tensorflow-cpu"))
    return versions
