"""``triton-deploy monitor``: what a live Triton server is doing and answering, read from its metrics endpoint.

Two scrapes of ``/metrics`` an interval apart give rates: requests, failures, queue and compute time per request and
the batch size reached, per model (Triton's own counters), and for each monitored ensemble the class distribution
against the export's reference, the drift score, the low-confidence rate, images by format and decode failures by
reason (the custom metrics of ``model_metrics``). No Prometheus is needed. A metric that is missing is explained in
one line (a repository generated without monitoring, an export without a reference).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from triton_deploy import metrics as server_stats  # scraping moved from loadtests/ to the core package
from triton_deploy.clients.tls import TlsOptions
from triton_deploy.errors import ModelNotFoundError, Problem, raise_problems

from . import model_metrics as mm


@dataclass(frozen=True)
class MonitorOptions:
    metrics_url: str = "127.0.0.1:8002"  # host:port or a full URL of Triton's metrics endpoint
    interval_s: float = 2.0  # between the two scrapes of one snapshot, and between refreshes of the live view
    once: bool = False  # one snapshot, then exit
    model: str | None = None  # only this ensemble (and its members); default: every model
    tls: TlsOptions | None = None  # for an https:// metrics URL (Triton's metrics port itself is plaintext)
    # serve's state file, for its restarts; default: the one in .triton-deploy/ that records this metrics URL
    state_file: Path | None = None

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if not self.interval_s > 0:
            problems.append((f"--interval must be positive, got {self.interval_s:g}", "check --interval"))
        if not self.metrics_url.strip():
            problems.append(("--metrics-url is empty", "pass HOST:PORT of Triton's metrics port"))
        return problems + (self.tls.problems() if self.tls else [])

    def check(self) -> None:
        raise_problems(self.problems())

    @property
    def url(self) -> str:
        url = self.metrics_url.strip()
        if "://" not in url:  # with TLS settings, HOST:PORT is an HTTPS gateway (Triton's metrics port is plaintext)
            url = f"{'https' if self.tls else 'http'}://{url}"
        return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


@dataclass(frozen=True)
class Scrape:
    time: float
    models: dict[str, server_stats.ModelTimes]
    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def read(cls, url: str, tls: TlsOptions | None = None) -> Scrape:
        text = server_stats.read_metrics_text(url, tls=tls)
        return cls(time.monotonic(), server_stats.parse_metrics(text), server_stats.parse_samples(text))

    def by_label(self, name: str, label: str, model: str) -> dict[str, float]:
        """Values of metric ``name`` for ensemble ``model``, keyed by ``label`` (summed over versions)."""
        values: dict[str, float] = {}
        for metric, labels, value in self.samples:
            if metric == name and labels.get("model") == model and label in labels:
                values[labels[label]] = values.get(labels[label], 0.0) + value
        return values

    def buckets(self, name: str, model: str) -> dict[float, float]:
        """The cumulative buckets of histogram ``name`` for ensemble ``model``: upper bound -> count (summed over
        versions), +Inf included."""
        counts: dict[float, float] = {}
        for metric, labels, value in self.samples:
            if metric == f"{name}_bucket" and labels.get("model") == model and "le" in labels:
                bound = float(labels["le"])
                counts[bound] = counts.get(bound, 0.0) + value
        return counts

    def total(self, name: str, model: str) -> float | None:
        found = [value for metric, labels, value in self.samples if metric == name and labels.get("model") == model]
        return sum(found) if found else None

    def monitored_models(self) -> list[str]:
        return sorted({labels["model"] for metric, labels, _ in self.samples
                       if metric.startswith("triton_classifier_") and "model" in labels})


@dataclass
class Snapshot:
    """One view of the server: rates over ``seconds`` between two scrapes, and current gauge values."""

    url: str
    seconds: float
    models: dict[str, dict] = field(default_factory=dict)
    ensembles: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    serve: dict | None = None  # restarts by triton-deploy serve: {"restarts": N, "last_restart": {...} | None}

    def to_dict(self) -> dict:
        return {"metrics_url": self.url, "seconds": round(self.seconds, 3), "models": self.models,
                "ensembles": self.ensembles, "notes": self.notes, "serve": self.serve}


def serve_restarts(options: MonitorOptions) -> dict | None:
    """The restarts serve recorded for the monitored server, from its state file; None when no state file records it."""
    candidates = [options.state_file] if options.state_file else sorted(Path(".triton-deploy").glob("serve*.json"))
    for path in candidates:
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if options.state_file or state.get("metrics") == options.url:
            return {"restarts": state.get("restarts", 0), "last_restart": state.get("last_restart")}
    return None


def check_model(scrape: Scrape, model: str | None, url: str) -> None:
    """``--model`` must name a model the server reports (an ensemble or a member model)."""
    known = sorted(set(scrape.models) | set(scrape.monitored_models()))
    if model and model not in known:
        raise ModelNotFoundError(f"no model {model} at {url}; the models there are: {', '.join(known) or 'none'}",
                                 hint="check --model")


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of cumulative histogram buckets (upper bound -> count), interpolated linearly inside the bucket
    as PromQL's histogram_quantile() does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # PromQL answers the highest finite bound too
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = bound, count
    return lower


def take_snapshot(before: Scrape, after: Scrape, url: str, model: str | None = None) -> Snapshot:
    seconds = max(after.time - before.time, 1e-9)
    snapshot = Snapshot(url, seconds)
    for name, times in sorted(after.models.items()):
        if model and name != model and not name.startswith(model + "_"):
            continue
        diff = times - before.models.get(name, server_stats.ModelTimes(name))
        snapshot.models[name] = {
            "requests_per_s": round(diff.requests / seconds, 2),
            "failures_per_s": round(diff.failures / seconds, 2),
            "images_per_s": round(diff.inferences / seconds, 2),
            "queue_ms_per_request": _round(diff.per_request_ms("queue_us") if diff.requests else None),
            "compute_ms_per_request": _round(diff.per_request_ms("compute_us") if diff.requests else None),
            "average_batch": _round(diff.average_batch if diff.executions else None),
            "requests_total": times.requests, "failures_total": times.failures,
        }
    if not after.models:
        snapshot.notes.append(f"no Triton model metrics at {url}: is this Triton's metrics port (--metrics-port)?")
    monitored = [m for m in after.monitored_models() if not model or m == model]
    for ensemble in monitored:
        snapshot.ensembles[ensemble] = _ensemble_view(before, after, ensemble, seconds, snapshot.notes)
    ensembles_without = sorted({name for name in after.models if f"{name}_postprocess" in after.models}
                               - set(monitored))
    for name in ensembles_without:
        if not model or name == model:
            snapshot.notes.append(
                f"{name}: no prediction metrics (triton_classifier_*): its repository was generated without "
                "monitoring (by an older triton-deploy or with --no-monitoring); regenerate it with 'triton-deploy "
                "repo' to see classes, confidence, drift and decode failures")
    return snapshot


def _ensemble_view(before: Scrape, after: Scrape, ensemble: str, seconds: float, notes: list[str]) -> dict:
    def increase(name: str, label: str) -> dict[str, float]:
        old = before.by_label(name, label, ensemble)
        # A counter that went down was reset by a restart: count from zero, as Prometheus' increase() does.
        return {key: value - old.get(key, 0.0) if value >= old.get(key, 0.0) else value
                for key, value in after.by_label(name, label, ensemble).items()}

    predicted = increase(mm.PREDICTIONS, "class")
    predictions = sum(predicted.values())
    totals = after.by_label(mm.PREDICTIONS, "class", ensemble)
    reference = after.by_label(mm.REFERENCE_RATIO, "class", ensemble)
    everything = sum(totals.values())
    classes = {label: {"predictions": predicted.get(label, 0.0), "total": totals[label],
                       "share": _round(predicted.get(label, 0.0) / predictions if predictions else None),
                       "share_total": _round(totals[label] / everything if everything else None),
                       "reference_share": _round(reference.get(label))} for label in sorted(totals, key=_natural)}
    low = increase(mm.LOW_CONFIDENCE, "model")
    low_count = sum(low.values())
    drift = after.by_label(mm.DRIFT, "distribution", ensemble)
    window = after.total(mm.DRIFT_WINDOW, ensemble)
    if not drift:
        notes.append(f"{ensemble}: no drift score: its export has no reference distribution (exports with labelled "
                     "held-out data record one); re-export and regenerate the repository")
    elif any(math.isnan(v) for v in drift.values()):
        notes.append(f"{ensemble}: drift score not computed yet: the window holds {window or 0:.0f} predictions, "
                     "fewer than its minimum (--drift-min-predictions)")
    old_buckets = before.buckets(mm.CONFIDENCE, ensemble)
    confidence = {bound: count - old_buckets.get(bound, 0.0) if count >= old_buckets.get(bound, 0.0) else count
                  for bound, count in after.buckets(mm.CONFIDENCE, ensemble).items()}
    images = increase(mm.IMAGES, "format")
    failures = increase(mm.DECODE_FAILURES, "reason")
    received = sum(images.values())
    return {
        "predictions_per_s": round(predictions / seconds, 2),
        "classes": classes,
        "low_confidence_ratio": _round(low_count / predictions if predictions else None),
        "low_confidence_total": after.total(mm.LOW_CONFIDENCE, ensemble),
        # Predictions in the interval with a top-1 probability at most `le` (cumulative, as in Prometheus).
        "confidence_buckets": {_le(bound): count for bound, count in sorted(confidence.items())},
        "median_confidence": _round(histogram_quantile(0.5, confidence)),
        "drift": {name: _round(value) for name, value in drift.items()},
        "drift_window_predictions": window,
        "images_per_s": round(received / seconds, 2),
        "images_by_format": {k: v for k, v in images.items() if v},
        "images_by_encoding": {k: v for k, v in increase(mm.IMAGES, "encoding").items() if v},
        "decode_failures_per_s": {k: round(v / seconds, 2) for k, v in failures.items() if v},
        "decode_failure_ratio": _round(sum(failures.values()) / received if received else None),
        "decode_failures_total": {k: v for k, v in after.by_label(mm.DECODE_FAILURES, "reason", ensemble).items()
                                  if v},
    }


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def _natural(label: str) -> tuple:
    """Labels "2" < "10" (digits as numbers), then text labels in alphabetical order."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def snapshot_once(options: MonitorOptions) -> Snapshot:
    """Scrape, wait ``interval_s``, scrape again: one snapshot with rates over that interval."""
    options.check()
    before = Scrape.read(options.url, options.tls)
    check_model(before, options.model, options.url)
    time.sleep(options.interval_s)
    snapshot = take_snapshot(before, Scrape.read(options.url, options.tls), options.url, options.model)
    snapshot.serve = serve_restarts(options)
    return snapshot


def render(snapshot: Snapshot):
    """The snapshot as rich renderables: a table of models, one of classes per ensemble, and the notes."""
    parts: list[Text | Table] = [Text(f"Triton metrics {snapshot.url} — rates over the last {snapshot.seconds:.1f} s", style="bold")]
    models = Table(title="models", title_justify="left")
    for column in ("model", "req/s", "failed/s", "images/s", "queue ms/req", "compute ms/req", "batch"):
        models.add_column(column, justify="left" if column == "model" else "right")
    for name, row in snapshot.models.items():
        models.add_row(name, _fmt(row["requests_per_s"]), _fmt(row["failures_per_s"]), _fmt(row["images_per_s"]),
                       _fmt(row["queue_ms_per_request"], 2), _fmt(row["compute_ms_per_request"], 2),
                       _fmt(row["average_batch"], 1))
    parts.append(models)
    if snapshot.serve is not None:
        last = snapshot.serve["last_restart"]
        parts.append(Text(f"serve restarted Triton {snapshot.serve['restarts']} time(s)" +
                          (f"; last: {last['reason']} ({last['at']})" if last else ""),
                          style="red" if snapshot.serve["restarts"] else ""))
    for ensemble, view in snapshot.ensembles.items():
        drift = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in sorted(view["drift"].items())) or "n/a"
        low = view["low_confidence_ratio"]
        parts.append(Text(
            f"{ensemble}: {view['predictions_per_s']:.1f} predictions/s   drift (JS distance, 0-1) {drift} over "
            f"{_fmt(view['drift_window_predictions'], 0)} predictions   low-confidence "
            f"{'n/a' if low is None else f'{low:.1%}'}   median confidence {_fmt(view['median_confidence'], 3)}",
            style="bold"))
        classes = Table(show_edge=False)
        for column in ("class", "share now", "since start", "reference", "predictions", "total"):
            classes.add_column(column, justify="left" if column == "class" else "right")
        for label, row in view["classes"].items():
            share, ref = row["share"], row["reference_share"]
            style = "red" if share is not None and ref and abs(share - ref) > max(0.05, ref / 2) else None
            classes.add_row(label, _pct(share), _pct(row["share_total"]), _pct(ref), f"{row['predictions']:.0f}",
                            f"{row['total']:.0f}", style=style)
        parts.append(classes)
        images = ", ".join(f"{k} {v:.0f}" for k, v in view["images_by_format"].items()) or "none"
        failures = ", ".join(f"{k} {v:.0f}" for k, v in view["decode_failures_total"].items()) or "none"
        parts.append(Text(f"  images in the interval by format: {images}   decode failures since start: {failures}"))
    for note in snapshot.notes:
        parts.append(Text(f"note: {note}", style="yellow"))
    return Group(*parts)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def run_monitor(options: MonitorOptions, console=None) -> Snapshot:
    """The live view: refresh every ``interval_s`` until interrupted (Ctrl-C); returns the last snapshot."""
    options.check()
    console = console or Console()
    before = Scrape.read(options.url, options.tls)
    check_model(before, options.model, options.url)
    time.sleep(min(options.interval_s, 1.0))
    after = Scrape.read(options.url, options.tls)
    snapshot = take_snapshot(before, after, options.url, options.model)
    snapshot.serve = serve_restarts(options)
    with Live(render(snapshot), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(options.interval_s)
                before, after = after, Scrape.read(options.url, options.tls)
                snapshot = take_snapshot(before, after, options.url, options.model)
                snapshot.serve = serve_restarts(options)
                live.update(render(snapshot))
        except KeyboardInterrupt:
            pass
    return snapshot
