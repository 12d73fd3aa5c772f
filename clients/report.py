"""What ``evaluate`` writes: ``report.json`` (everything), ``report.md`` (the same for people), ``confusion.png``
(counts and row-normalised) and ``errors.png`` (misclassified images with true/predicted label and confidence); with
an A/B comparison also ``confusion-<model B>.png`` and ``errors-<model B>.png``. ``summary`` is what the command
prints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from PIL import Image

if TYPE_CHECKING:
    from .evaluate import Evaluation, ModelRun
    from .scoring import Scores


def write_report(evaluation: Evaluation, directory: Path) -> None:
    directory = Path(directory)
    data = to_dict(evaluation)
    (directory / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (directory / "report.md").write_text(markdown(evaluation), encoding="utf-8")
    for i, (run, scores) in enumerate(zip(evaluation.runs, evaluation.scores, strict=True)):
        suffix = "" if i == 0 else f"-{run.model}"
        confusion_plot(scores, evaluation.data.labels, run.model, directory / f"confusion{suffix}.png")
        errors_plot(evaluation, run, directory / f"errors{suffix}.png")


def to_dict(evaluation: Evaluation) -> dict:
    options, data = evaluation.options, evaluation.data
    models = []
    for run, scores in zip(evaluation.runs, evaluation.scores, strict=True):
        models.append({
            "model": run.model, **scores.to_dict(),
            "latency_ms": {"p50": run.latency_ms(50), "p95": run.latency_ms(95)},
            "undecodable": [{"file": o.source, "reason": o.error.reason if o.error else ""} for o in run.failed()],
            "misclassified": [_record(evaluation, run, i) for i, o in enumerate(run.outcomes)
                              if o.prediction is not None and o.prediction.class_id != data.truth[i]],
        })
    result = {"data_dir": str(options.data_dir), "url": options.address, "protocol": options.protocol,
              "images": len(data.files), "labels": list(data.labels),
              "images_per_label": {label: int(np.sum(data.truth == i)) for i, label in enumerate(data.labels)},
              "batch_size": options.batch_size, "concurrency": options.concurrency, "models": models,
              "min_accuracy": options.min_accuracy, "passed": evaluation.passed}
    if evaluation.comparison is not None:
        a, b = evaluation.runs
        comparison = evaluation.comparison
        result["comparison"] = {
            "model_a": a.model, "model_b": b.model, **comparison.to_dict(),
            "verdict": comparison.verdict(a.model, b.model),
            "disagreements": [_disagreement(evaluation, i) for i in evaluation.disagreeing_files()],
        }
    return result


def _record(evaluation: Evaluation, run: ModelRun, i: int) -> dict:
    prediction = run.predicted(i)
    labels = evaluation.data.labels
    return {"file": run.outcomes[i].source, "true": labels[evaluation.data.truth[i]], "predicted": prediction.label,
            "confidence": prediction.score}


def _disagreement(evaluation: Evaluation, i: int) -> dict:
    a, b = evaluation.runs
    return {"file": a.outcomes[i].source, "true": evaluation.data.labels[evaluation.data.truth[i]],
            a.model: a.predicted(i).label, b.model: b.predicted(i).label}


def summary(evaluation: Evaluation) -> str:
    """The lines the command prints: accuracy, per-class table, top-k, confidence, undecodable images, A/B."""
    lines = []
    for run, scores in zip(evaluation.runs, evaluation.scores, strict=True):
        lines.append(f"{run.model}: accuracy {scores.accuracy:.4f} on {scores.images} images "
                     f"({len(run.failed())} undecodable); "
                     + ", ".join(f"top-{k} {v:.4f}" for k, v in scores.top_k.items() if k in (1, 3, 5)))
        lines.append(f"  confidence when right {_fmt(scores.confidence_right['mean'])} (median "
                     f"{_fmt(scores.confidence_right['median'])}), when wrong {_fmt(scores.confidence_wrong['mean'])} "
                     f"(median {_fmt(scores.confidence_wrong['median'])}); request p50 {run.latency_ms(50):.1f} ms, "
                     f"p95 {run.latency_ms(95):.1f} ms")
        lines.append("  class      precision  recall  f1      images")
        lines += [f"  {c.label[:10]:10s} {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:6.4f}  {c.support:6d}"
                  for c in scores.per_class]
        for outcome in run.failed():
            lines.append(f"  undecodable: {outcome.source}: {outcome.error.reason if outcome.error else ''}")
    if evaluation.comparison is not None:
        a, b = evaluation.runs
        c = evaluation.comparison
        lines.append(f"A/B on {c.images} images: {a.model} {c.accuracy_a:.4f} vs {b.model} {c.accuracy_b:.4f}; "
                     f"agreement {c.agreement:.4f} ({len(c.disagreements)} disagreements); "
                     f"{c.verdict(a.model, b.model)}")
    if evaluation.options.min_accuracy is not None:
        verdict = "passed" if evaluation.passed else "FAILED"
        lines.append(f"gate --min-accuracy {evaluation.options.min_accuracy:g}: {verdict}")
    lines.append(f"report: {evaluation.output or ''}/report.md, confusion plot: {evaluation.output or ''}/confusion.png")
    return "\n".join(lines)


def markdown(evaluation: Evaluation) -> str:
    options, data = evaluation.options, evaluation.data
    names = [run.model for run in evaluation.runs]
    out = [f"# Evaluation of `{names[0]}`" + (f" vs `{names[1]}`" if len(names) > 1 else ""),
           "", f"{len(data.files)} labelled images from `{options.data_dir}` ({len(data.labels)} labels), through "
           f"{options.protocol} at {options.address}, batch size {options.batch_size or 'the model maximum'}, "
           f"{options.concurrency} requests in flight.", ""]
    for run, scores in zip(evaluation.runs, evaluation.scores, strict=True):
        out += [f"## `{run.model}`", "",
                f"Accuracy **{scores.accuracy:.4f}** on {scores.images} images; "
                + ", ".join(f"top-{k} {v:.4f}" for k, v in scores.top_k.items()) + ".", "",
                f"Confidence of right answers: mean {_fmt(scores.confidence_right['mean'])}, median "
                f"{_fmt(scores.confidence_right['median'])} ({scores.confidence_right['images']} images); of wrong "
                f"answers: mean {_fmt(scores.confidence_wrong['mean'])}, median "
                f"{_fmt(scores.confidence_wrong['median'])} ({scores.confidence_wrong['images']} images).", "",
                f"Request latency: p50 {run.latency_ms(50):.1f} ms, p95 {run.latency_ms(95):.1f} ms.", "",
                "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        out += [f"| {c.label} | {c.precision:.4f} | {c.recall:.4f} | {c.f1:.4f} | {c.support} |"
                for c in scores.per_class]
        failed = run.failed()
        out += ["", f"Undecodable images: {len(failed)}"]
        out += [f"- `{o.source}`: {o.error.reason if o.error else ''}" for o in failed]
        out.append("")
    if evaluation.comparison is not None:
        a, b = evaluation.runs
        c = evaluation.comparison
        out += ["## A/B", "", f"| | `{a.model}` | `{b.model}` |", "|---|---|---|",
                f"| accuracy | {c.accuracy_a:.4f} | {c.accuracy_b:.4f} |",
                f"| right where the other is wrong | {c.only_a_right} | {c.only_b_right} |",
                f"| request p50 / p95 ms | {a.latency_ms(50):.1f} / {a.latency_ms(95):.1f} | "
                f"{b.latency_ms(50):.1f} / {b.latency_ms(95):.1f} |", "",
                f"Agreement {c.agreement:.4f} on {c.images} images both classified; {c.verdict(a.model, b.model)}.",
                "", "Disagreements (first 50):", ""]
        for i in evaluation.disagreeing_files()[:50]:
            row = _disagreement(evaluation, i)
            out.append(f"- `{row['file']}`: true {row['true']}, {a.model} {row[a.model]}, {b.model} {row[b.model]}")
        out.append("")
    if options.min_accuracy is not None:
        out += [f"Gate: accuracy >= {options.min_accuracy:g}: **{'passed' if evaluation.passed else 'failed'}**", ""]
    return "\n".join(out)


def confusion_plot(scores: Scores, labels: tuple[str, ...], model: str, path: Path) -> None:
    counts = scores.confusion
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, values, title, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        image = ax.imshow(values, cmap="Blues")
        ax.set_title(f"{model}: {title}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels=labels, rotation=90 if len(labels) > 12 else 0)
        ax.set_yticks(ticks, labels=labels)
        if len(labels) <= 20:  # numbers in the cells stay readable up to about 20 classes
            peak = values.max() or 1
            for (r, c), value in np.ndenumerate(values):
                ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 * peak else "black")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"accuracy {scores.accuracy:.4f} on {scores.images} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def errors_plot(evaluation: Evaluation, run: ModelRun, path: Path) -> None:
    """A grid of misclassified images, most confident mistakes first (the ones a user would trust)."""
    data = evaluation.data
    wrong = [i for i, o in enumerate(run.outcomes) if o.prediction is not None and o.prediction.class_id !=
             data.truth[i]]
    wrong.sort(key=lambda i: -run.predicted(i).score)
    wrong = wrong[:evaluation.options.error_grid]
    columns = max(1, min(6, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):  # more axes than mistakes
        prediction = run.predicted(i)
        with Image.open(data.files[i]) as image:
            image.thumbnail((128, 128))
            ax.imshow(image.convert("RGB"))
        ax.set_title(f"true {data.labels[data.truth[i]]} -> {prediction.label}\n{prediction.score:.2f}", fontsize=8)
    if not wrong:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"{run.model}: {len(wrong)} most confident mistakes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN: no images in that group
