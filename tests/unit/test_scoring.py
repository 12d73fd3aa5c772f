"""Scoring and the evaluate report without a server: classes absent from the data are n/a, macro averages cover the
classes present and the report says so (issue 24 item 4)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from triton_deploy.clients.evaluate import EvaluateOptions, Evaluation, LabelledImages, ModelRun, _score
from triton_deploy.clients.report import markdown, summary, write_report
from triton_deploy.clients.results import Outcome, Prediction, Rank
from triton_deploy.clients.scoring import Answers, score

LABELS = tuple(str(d) for d in range(10))


def _answers(truth, predicted):
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return Answers(truth, predicted[:, None], np.full(len(truth), 0.9))


def test_classes_absent_from_the_data_are_na_and_macro_averages_cover_the_present_ones():
    truth = [0] * 21 + [3] * 21 + [7] * 21  # 63 images of 3 of the 10 labels, all right
    scores = score(_answers(truth, truth), LABELS)
    absent = [c for c in scores.per_class if c.label not in ("0", "3", "7")]
    assert len(absent) == 7 and all(c.precision is None and c.recall is None and c.f1 is None for c in absent)
    macro = scores.macro
    assert (macro.precision, macro.recall, macro.f1, macro.classes, macro.of) == (1.0, 1.0, 1.0, 3, 10)
    data = scores.to_dict()
    assert data["macro_f1"] == 1.0 and data["macro"]["classes"] == 3
    assert json.loads(json.dumps(data))["per_class"][1]["f1"] is None  # JSON null, not 0.0


def test_an_absent_class_the_model_answered_has_precision_zero_and_is_not_averaged():
    truth, predicted = [0, 0, 1, 1], [0, 5, 1, 1]  # one image of class 0 read as 5, which has no image
    scores = score(_answers(truth, predicted), LABELS)
    five = scores.per_class[5]
    assert five.precision == 0.0 and five.recall is None and five.f1 is None and not five.present
    assert scores.macro.classes == 2
    assert scores.macro.recall == np.mean([0.5, 1.0]) and scores.macro.precision == 1.0


def _evaluation(tmp_path, truth, predicted):
    files = []
    for i, t in enumerate(truth):
        path = tmp_path / "data" / LABELS[t] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), 255 if i % 2 else 0).save(path)
        files.append(path)
    data = LabelledImages(tuple(files), np.asarray(truth), LABELS)
    outcomes = [Outcome(i, str(f), Prediction(str(f), (Rank(LABELS[p], p, 0.5 + 0.05 * (i % 10)),)), request_s=0.01)
                for i, (f, p) in enumerate(zip(files, predicted, strict=True))]
    options = EvaluateOptions(data_dir=tmp_path / "data", output=tmp_path / "out")
    return _score(options, data, [ModelRun("digits", outcomes)])


def test_the_report_shows_na_and_says_which_classes_the_macro_averages_cover(tmp_path):
    truth = [0] * 5 + [3] * 5 + [7] * 5
    evaluation: Evaluation = _evaluation(tmp_path, truth, truth[:-1] + [3])
    text = markdown(evaluation)
    assert "| 1 | n/a | n/a | n/a | 0 |" in text
    assert "over the 3 of 10 classes that have images in DATA_DIR" in text
    printed = summary(evaluation)
    assert "macro precision" in printed and "3 of 10 classes" in printed and "n/a" in printed
    write_report(evaluation, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["models"][0]["macro"]["classes"] == 3
    assert (tmp_path / "confusion.png").stat().st_size > 0 and (tmp_path / "errors.png").stat().st_size > 0
