"""Triton's own view of its traffic, scraped from the server: per-model request counts, batch sizes and where server
time went. Used by the load tests, the bench and ``triton-deploy monitor``.

Two sources give the same ``ModelTimes``: the Prometheus endpoint (``/metrics``, counters in microseconds) and the
statistics API (``/v2/models/stats``, nanoseconds). Take a snapshot before and after a run and subtract; the
difference covers exactly the requests of the run, for the ensemble and each member model.
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from triton_deploy.errors import ClientError

if TYPE_CHECKING:  # the settings object only: the core package does not import the clients at run time
    from triton_deploy.clients.tls import TlsOptions

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# Prometheus metric -> ModelTimes field. Triton's counters are cumulative since the server started.
METRICS = {
    "nv_inference_request_success": "requests",
    "nv_inference_request_failure": "failures",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}


@dataclass(frozen=True)
class ModelTimes:
    """Cumulative counters of one model. Durations are summed over requests (a batch of 8 adds its time 8 times),
    so ``per_request`` gives the time a request spent in each phase."""

    model: str
    requests: float = 0.0
    failures: float = 0.0
    inferences: float = 0.0  # images (batch rows) inferred
    executions: float = 0.0  # model executions (batches)
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0

    def __sub__(self, other: ModelTimes) -> ModelTimes:
        values = {f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self) if f.name != "model"}
        return ModelTimes(self.model, **values)

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us

    @property
    def average_batch(self) -> float:
        """Images per model execution: what dynamic batching achieved."""
        return self.inferences / self.executions if self.executions else 0.0

    def per_request_ms(self, phase: str) -> float:
        total = getattr(self, phase) if phase != "compute_us" else self.compute_us
        return total / self.requests / 1000.0 if self.requests else 0.0

    def summary(self) -> dict:
        data = asdict(self)
        data.update(average_batch=round(self.average_batch, 3),
                    ms_per_request={p.removesuffix("_us"): round(self.per_request_ms(p), 4)
                                    for p in ("request_us", "queue_us", "compute_input_us", "compute_infer_us",
                                              "compute_output_us")})
        return data


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text -> (metric name, labels, value) of every labelled sample."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples.append((match.group("name"), dict(_LABEL.findall(match.group("labels"))),
                            float(match.group("value"))))
    return samples


def parse_metrics(text: str) -> dict[str, ModelTimes]:
    """Prometheus text from Triton -> model name -> counters (summed over versions)."""
    totals: dict[str, dict[str, float]] = {}
    for name, labels, value in parse_samples(text):
        model = labels.get("model")
        if name not in METRICS or model is None:
            continue
        row = totals.setdefault(model, {})
        row[METRICS[name]] = row.get(METRICS[name], 0.0) + value
    return {model: ModelTimes(model, **values) for model, values in totals.items()}


def read_metrics_text(url: str, timeout_s: float = 5.0, tls: TlsOptions | None = None) -> str:
    """The text of Triton's metrics endpoint (``https://`` through a gateway, verified with ``tls``); a
    ``ClientError`` naming --metrics-url when it does not answer."""
    context = tls.ssl_context() if tls is not None else None  # urllib uses it for https:// only
    hint = "check --metrics-url (Triton's --metrics-port, default 8002)"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.read().decode("utf-8", errors="replace")
    except http.client.HTTPException:  # e.g. the gRPC port: it answers, but not with HTTP/1
        raise ClientError(f"cannot read Triton metrics from {url}: the port answers, but not with HTTP (is it the gRPC "
                          "port?)", hint=hint) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):  # an HTTPS gateway in front of the metrics port
            hint = "pass --tls-ca with the CA that signed the gateway's certificate, or check --metrics-url"
        raise ClientError(f"cannot read Triton metrics from {url}: {reason}", hint=hint) from None


def scrape_metrics(url: str, timeout_s: float = 5.0, tls: TlsOptions | None = None) -> dict[str, ModelTimes]:
    return parse_metrics(read_metrics_text(url, timeout_s, tls))


def from_statistics(stats: dict) -> dict[str, ModelTimes]:
    """The JSON of the statistics API (``get_inference_statistics(as_json=True)``) -> model name -> counters."""
    result: dict[str, dict[str, float]] = {}
    for entry in stats.get("model_stats", []):
        inference = entry.get("inference_stats", {})

        def part(key: str, what: str, inference: dict = inference) -> float:
            return float(inference.get(key, {}).get(what, 0) or 0)

        row = result.setdefault(entry["name"], {f: 0.0 for f in METRICS.values()})
        row["requests"] += part("success", "count")
        row["failures"] += part("fail", "count")
        row["inferences"] += float(entry.get("inference_count", 0) or 0)
        row["executions"] += float(entry.get("execution_count", 0) or 0)
        row["request_us"] += part("success", "ns") / 1000.0
        row["queue_us"] += part("queue", "ns") / 1000.0
        row["compute_input_us"] += part("compute_input", "ns") / 1000.0
        row["compute_infer_us"] += part("compute_infer", "ns") / 1000.0
        row["compute_output_us"] += part("compute_output", "ns") / 1000.0
    return {model: ModelTimes(model, **values) for model, values in result.items()}


def counters_reset(before: dict[str, ModelTimes], after: dict[str, ModelTimes]) -> list[str]:
    """Models whose counters went backwards: the server restarted in between (a killed process, a restarted pod)."""
    return sorted(model for model, times in after.items()
                  if model in before and times.requests + times.failures < before[model].requests + before[model].failures)


def delta(before: dict[str, ModelTimes], after: dict[str, ModelTimes], prefix: str | None = None) -> dict[str, ModelTimes]:
    """``after - before`` for the models that served requests in between (only ``prefix`` and ``prefix_*`` when
    given), ensemble first, then members in name order. A model whose counters were reset by a restart counts from
    zero, as Prometheus' ``increase()`` does: what it served since the restart, never a negative figure."""
    changed = {}
    reset = set(counters_reset(before, after))
    for model, times in after.items():
        if prefix and model != prefix and not model.startswith(prefix + "_"):
            continue
        diff = times if model in reset else times - before.get(model, ModelTimes(model))
        if diff.requests > 0 or diff.failures > 0:
            changed[model] = diff
    return dict(sorted(changed.items(), key=lambda kv: (kv[0] != prefix, kv[0])))


def markdown_table(per_model: dict[str, ModelTimes]) -> str:
    lines = ["| model | requests | images | batches | avg batch | queue ms | input ms | infer ms | output ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, t in per_model.items():
        lines.append(f"| {model} | {t.requests:.0f} | {t.inferences:.0f} | {t.executions:.0f} | "
                     f"{t.average_batch:.2f} | {t.per_request_ms('queue_us'):.2f} | "
                     f"{t.per_request_ms('compute_input_us'):.2f} | {t.per_request_ms('compute_infer_us'):.2f} | "
                     f"{t.per_request_ms('compute_output_us'):.2f} |")
    return "\n".join(lines)


COLUMNS = """Columns, per model over the run (the difference of Triton's Prometheus counters before and after it):

- requests: requests the model answered successfully.
- images: inferences; a request of 8 images counts 8.
- batches: executions, how often the model ran; below images when dynamic batching merged requests.
- avg batch: images per execution, the batch size dynamic batching reached.
- queue ms: per request, time waiting in the model's scheduler queue for a free instance.
- input ms, infer ms, output ms: per request, time copying inputs in, running the model, copying outputs out.

The ensemble's row is the whole pipeline as one request; its members' rows show where the time went. A long queue
with small batches means the server is short of compute."""


def server_report(per_model: dict[str, ModelTimes], title: str, note: str | None = None) -> str:
    """``server.md``: a heading naming the run, an optional note, the table and what each column means."""
    parts = [f"# Triton's view of the run: {title}", *([f"Note: {note}."] if note else []), markdown_table(per_model),
             COLUMNS]
    return "\n\n".join(parts) + "\n"
