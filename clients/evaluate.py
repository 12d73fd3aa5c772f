"""``triton-deploy evaluate DATA_DIR``: the accuracy of a served classifier on labelled images, optionally against a
second model on the same images (A/B), with a gate for CI/CD.

``DATA_DIR`` holds one sub-folder per label. Every image goes through the live server with the project's client
(batched, ``concurrency`` requests in flight). With ``compare``, the two models are called in turns on the same
chunks of images, so their latencies are measured under the same conditions. The report (``report.md``,
``report.json``, ``confusion.png``, ``errors.png``) is staged and moved into ``output`` in one rename: a run that
fails leaves nothing behind. An image that cannot be decoded is named in the report, not fatal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triton_deploy.contract import IMAGE_SUFFIXES
from triton_deploy.errors import Problem, raise_problems
from triton_deploy.fsutil import atomic_directory, check_output_dir
from triton_deploy.progress import Reporter

from . import scoring
from .classifier import ImageClassifier
from .discovery import NEEDS_PREPROCESSING
from .errors import AccuracyGateError, DatasetError, ModelMismatchError
from .results import Outcome, Prediction
from .tls import TlsOptions

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
CHUNK_REQUESTS = 4  # requests per model per turn when two models take turns


@dataclass(frozen=True)
class EvaluateOptions:
    data_dir: Path
    output: Path
    url: str | None = None
    protocol: str = "grpc"
    model: str = "digits"
    compare: str | None = None  # a second ensemble to compare with ``model`` on the same images
    model_version: str = ""  # call this classifier version of ``model`` (client-side preprocessing, admin key)
    compare_version: str = ""  # ... and compare it with this version (of ``compare``, or of ``model`` by default)
    min_accuracy: float | None = None  # gate: fail (AccuracyGateError) when the model's accuracy is lower
    batch_size: int | None = None
    concurrency: int = 4
    timeout_s: float = 60.0
    ready_timeout_s: float = 30.0
    retries: int = 3
    admin_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tls: TlsOptions | None = None  # None: plaintext
    force: bool = False
    error_grid: int = 36  # misclassified images drawn in errors.png

    def __post_init__(self) -> None:  # a default filled in, not a check: ``check()`` validates
        if self.compare_version and not self.compare:
            object.__setattr__(self, "compare", self.model)  # versions of one model: A/B of its classifier versions

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            problems.append((f"--min-accuracy must be between 0 and 1, not {self.min_accuracy}",
                             "e.g. --min-accuracy 0.97"))
        if self.compare is not None and self.targets[0] == self.targets[1]:
            problems.append((f"--compare names the same model as --model ({self.model!r})",
                             "check --compare / --compare-version"))
        return problems + (self.tls.problems() if self.tls else [])

    def check(self) -> None:
        raise_problems(self.problems())

    @property
    def targets(self) -> list[tuple[str, str]]:
        """(model, version) of model A and, when comparing, model B."""
        first = [(self.model, self.model_version)]
        return first + ([(self.compare, self.compare_version)] if self.compare else [])

    @property
    def address(self) -> str:
        return self.url or f"127.0.0.1:{DEFAULT_PORTS[self.protocol]}"


@dataclass(frozen=True)
class LabelledImages:
    files: tuple[Path, ...]
    truth: np.ndarray  # class id of each file
    labels: tuple[str, ...]  # the model's labels, in class order


@dataclass
class ModelRun:
    """One model's outcomes on every image, in file order (``iter_outcomes`` yields them in input order)."""

    model: str
    outcomes: list[Outcome]

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def predicted(self, i: int) -> Prediction:
        """Image i's prediction; only asked of images that were classified."""
        prediction = self.outcomes[i].prediction
        if prediction is None:
            raise ValueError(f"image {i} ({self.outcomes[i].source}) was not classified")
        return prediction

    def latency_ms(self, q: float) -> float:
        """Percentile of request latency, over images: each image counts the request it travelled in."""
        return scoring.percentile_ms([o.request_s for o in self.outcomes if o.request_s is not None], q)


@dataclass
class Evaluation:
    options: EvaluateOptions
    data: LabelledImages
    runs: list[ModelRun]
    scores: list[scoring.Scores]  # per run, on the images that run classified
    comparison: scoring.Comparison | None
    compared: np.ndarray | None  # indices of the files both models classified (comparison's index space)
    output: Path | None = None

    @property
    def accuracy(self) -> float:
        return self.scores[0].accuracy

    def disagreeing_files(self) -> list[int]:
        """File indices of the images on which the two compared models answered differently."""
        if self.comparison is None or self.compared is None:
            return []
        return [int(self.compared[j]) for j in self.comparison.disagreements]

    @property
    def passed(self) -> bool:
        return self.options.min_accuracy is None or self.accuracy >= self.options.min_accuracy


def find_labelled_images(data_dir: Path, labels: tuple[str, ...]) -> LabelledImages:
    """Image files of ``data_dir/<label>/`` (searched recursively); every sub-folder must name one of ``labels``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"data directory {data_dir} not found", hint="DATA_DIR must hold one folder per label")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f.name for f in folders if f.name not in labels]
    if unknown:
        shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
        raise DatasetError(f"folder(s) {', '.join(unknown)} in {data_dir} match none of the model's labels ({shown})",
                           hint="name each sub-folder of DATA_DIR after a label")
    index = {label: i for i, label in enumerate(labels)}
    files, truth = [], []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            files.append(path)
            truth.append(index[folder.name])
    if not files:
        raise DatasetError(f"no images in {data_dir}: expected image files in one sub-folder per label "
                           f"({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})",
                           hint="check DATA_DIR")
    return LabelledImages(tuple(files), np.asarray(truth, dtype=np.int64), labels)


def evaluate(options: EvaluateOptions, reporter: Reporter | None = None) -> Evaluation:
    """Run the evaluation and write the report; raises ``AccuracyGateError`` (after writing) below the gate."""
    # matplotlib (about a second to import): only when the report is drawn
    from .report import write_report

    options.check()
    reporter = reporter or Reporter(quiet=True)
    check_output_dir(Path(options.output), force=options.force)
    if not Path(options.data_dir).is_dir():  # before connecting: the cheapest mistake to report
        find_labelled_images(options.data_dir, ())
    names = [run_name(model, version) for model, version in options.targets]
    clients: list[ImageClassifier] = []
    try:
        with reporter.step(f"Connecting to {', '.join(names)} at {options.address} ({options.protocol})"):
            for model, version in options.targets:
                clients.append(_client(options, model, version))
            labels = clients[0].labels()
            if options.compare:
                if clients[1].labels() != labels:
                    raise DatasetError(f"'{options.model}' and '{options.compare}' have different labels; an A/B "
                                       "comparison needs the same classes", hint="check --compare")
        data = find_labelled_images(options.data_dir, labels)
        runs = _classify(clients, data, options, reporter)
    finally:
        for client in clients:
            client.close()
    evaluation = _score(options, data, runs)
    with atomic_directory(Path(options.output), force=options.force) as staging:
        with reporter.step(f"Writing the report to {options.output}"):
            write_report(evaluation, staging)
    evaluation.output = Path(options.output)
    if not evaluation.passed:
        raise AccuracyGateError(
            f"'{options.model}' scored {evaluation.accuracy:.4f} on {evaluation.scores[0].images} images, below "
            f"--min-accuracy {options.min_accuracy:g} (report in {options.output})", evaluation=evaluation)
    return evaluation


def run_name(model: str, version: str) -> str:
    return f"{model}_v{version}" if version else model


def _client(options: EvaluateOptions, model: str, version: str) -> ImageClassifier:
    """An ensemble is called with encoded images; a classifier version directly, with the model's own
    preprocessing run here (an ensemble always runs its classifier's latest version)."""
    try:
        return _connect(options, model, version)
    except ModelMismatchError as exc:
        if not exc.message.startswith(NEEDS_PREPROCESSING):
            raise
        raise ModelMismatchError(  # classify's hint names --manifest, which evaluate does not take
            f"--model-version {version} calls '{model}_classifier' directly, with '{model}_preprocess''s "
            "preprocessing run here; its parameters are in a configuration the server shows only with the admin key",
            hint="pass the server's admin key: --admin-key KEY or TRITON_ADMIN_KEY (serve prints it)") from None


def _connect(options: EvaluateOptions, model: str, version: str) -> ImageClassifier:
    return ImageClassifier(options.address, protocol=options.protocol, model=model,
                           preprocess="client" if version else "server", model_version=version,
                           concurrency=options.concurrency, timeout=options.timeout_s,
                           ready_timeout=options.ready_timeout_s, retries=options.retries,
                           headers=dict(options.headers), admin_key=options.admin_key, tls=options.tls)


def _classify(clients: list[ImageClassifier], data: LabelledImages, options: EvaluateOptions,
              reporter: Reporter) -> list[ModelRun]:
    """Every image through every model. Models take turns on chunks of a few requests' worth of images, the order
    swapped each turn, so a slower moment of a shared machine falls on both."""
    files = [str(f) for f in data.files]
    runs = [ModelRun(run_name(c.options.model, c.options.model_version), []) for c in clients]
    sizes = [options.batch_size or c.max_batch_size for c in clients]
    chunk = max(sizes) * options.concurrency * CHUNK_REQUESTS if len(clients) > 1 else len(files)
    total = len(files) * len(clients)
    with reporter.bar(total, f"Classifying {len(files)} images with {' and '.join(r.model for r in runs)}") as bar:
        for turn, start in enumerate(range(0, len(files), chunk)):
            order = range(len(clients)) if turn % 2 == 0 else reversed(range(len(clients)))
            for i in order:
                for outcome in clients[i].iter_outcomes(files[start:start + chunk], None, sizes[i]):
                    runs[i].outcomes.append(outcome)
                    bar.advance(1, status=f"{sum(len(r.failed()) for r in runs)} undecodable")
    return runs


def _score(options: EvaluateOptions, data: LabelledImages, runs: list[ModelRun]) -> Evaluation:
    answers = [_answers(run, data) for run in runs]
    scores = [scoring.score(a, data.labels) for a, _rows in answers]
    comparison = compared = None
    if len(runs) == 2:
        both = np.intersect1d(answers[0][1], answers[1][1])
        picked = [_subset(a, rows, both) for a, rows in answers]
        comparison, compared = scoring.compare(*picked), both
    return Evaluation(options, data, runs, scores, comparison, compared)


def _answers(run: ModelRun, data: LabelledImages) -> tuple[scoring.Answers, np.ndarray]:
    rows = np.asarray([i for i, o in enumerate(run.outcomes) if o.prediction is not None], dtype=np.int64)
    ranked = np.asarray([[r.class_id for r in run.outcomes[i].prediction.ranks] for i in rows], dtype=np.int64)
    confidence = np.asarray([run.outcomes[i].prediction.score for i in rows], dtype=np.float64)
    if len(rows) == 0:
        ranked = np.zeros((0, 1), dtype=np.int64)
    return scoring.Answers(data.truth[rows], ranked, confidence), rows


def _subset(answers: scoring.Answers, rows: np.ndarray, keep: np.ndarray) -> scoring.Answers:
    position = np.searchsorted(rows, keep)
    return scoring.Answers(answers.truth[position], answers.ranked[position], answers.confidence[position])
