"""``triton-deploy bench``: how much of the pipeline's in-process speed survives serving, in one run on one machine.

For each model: (1) serving efficiency = ensemble images/s under saturating gRPC load / images/s of the same
pipeline in one Python process with the same ONNX Runtime threads; (2) dynamic batching on/off and 1 vs 2 classifier
instances at each concurrency; (3) HTTP vs gRPC latency at concurrency 1; (4) where a request's time goes (client,
queue, preprocess, classifier, postprocess), from Triton's statistics API. Writes ``report.md``, ``report.json`` and
``bench.png`` (images/s against concurrency per configuration, beside the in-process baseline and the target).
Figures are measured, never adjusted; on a shared machine only ratios from the same run mean much.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from triton_deploy import metrics
from triton_deploy.errors import ManifestError, Problem, raise_problems
from triton_deploy.fsutil import check_writable
from triton_deploy.loadtests import driver, plots
from triton_deploy.loadtests.payloads import ImagePool, PoolOptions, pool_from_digits
from triton_deploy.progress import Reporter
from triton_deploy.repository.render import RepositoryOptions
from triton_deploy.server import ServerOptions, TritonServer, free_ports
from triton_deploy.spec import Manifest

TARGETS = {"mobilenet_v2": 0.8, "digits": 0.6}  # serving efficiency the issue asks for
BUILT_IN = ("digits", "mobilenet_v2")
DEFAULT_CONFIG = "batching on, 2 instances"  # what `triton-deploy repo` generates by default on CPU


@dataclass(frozen=True)
class BenchOptions:
    output: Path = Path("results/bench")
    models: tuple[str, ...] = BUILT_IN  # built-in exports made (and cached) in work_dir
    exports: tuple[Path, ...] = ()  # existing export directories; used instead of ``models`` when given
    work_dir: Path | None = None  # default: output/work (exports and repositories, reused between runs)
    duration_s: float = 8.0  # per measurement
    concurrencies: tuple[int, ...] = (1, 4, 16)
    baseline_batches: tuple[int, ...] = (1, 8)
    image_size: int = 224  # for architectures from keras.applications
    quick: bool = False  # tiny run for tests: 1 s measurements, no 2-instance config
    demo_build: Path | None = Path("build")  # where `make demo` leaves build/digits, reused instead of retraining
    monitoring: bool = True  # the repositories report prediction metrics (repo --no-monitoring when False)

    def problems(self) -> list[Problem]:
        problems = []
        unknown = [m for m in self.models if m not in BUILT_IN]
        if unknown and not self.exports:
            problems.append((f"unknown model(s) {unknown}; the bench builds {', '.join(BUILT_IN)}",
                             "check --models, or pass export directories with --exports"))
        if self.duration_s <= 0:
            problems.append((f"--duration must be positive, got {self.duration_s:g}", "check --duration"))
        if not self.concurrencies or any(c < 1 for c in self.concurrencies):
            problems.append((f"concurrencies {list(self.concurrencies)} must be >= 1", "check --concurrency"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())

    @property
    def measure_s(self) -> float:
        return min(self.duration_s, 1.0) if self.quick else self.duration_s


@dataclass
class BenchResult:
    directory: Path
    report: dict
    markdown: str


def run_bench(options: BenchOptions, reporter: Reporter | None = None) -> BenchResult:
    reporter = reporter or Reporter(quiet=True)
    options.check()
    output = Path(options.output)
    check_writable(output, flag="--output")  # before minutes of training and measuring
    output.mkdir(parents=True, exist_ok=True)
    work = Path(options.work_dir or output / "work")
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": datetime.now().isoformat(timespec="seconds"), "machine": _machine(),
              "options": {"duration_s": options.measure_s, "concurrencies": list(options.concurrencies),
                          "quick": options.quick, "monitoring": options.monitoring}, "models": {}}
    exports = list(options.exports) or [_export(name, work, options, reporter) for name in options.models]
    for export_dir in exports:
        name, result = _bench_model(Path(export_dir), work, options, reporter)
        report["models"][name] = result
    report["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    markdown = render_markdown(report)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(markdown)
    plots.plot_bench(report, output / "bench.png")
    return BenchResult(output, report, markdown)


def _machine() -> dict:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()]}


def _export(name: str, work: Path, options: BenchOptions, reporter: Reporter) -> Path:
    """An export of the built-in model ``name``: one from an earlier bench run, else the one ``make demo`` made
    (``build/digits``), else a new one (for digits, minutes of training, with its progress bars)."""
    # the export pipeline loads onnx, and TensorFlow when it trains: only when it runs
    from triton_deploy.export.pipeline import ExportOptions, export_model

    target = work / f"export-{name}"
    candidates = [(target, "from an earlier bench run")]
    if options.demo_build is not None:
        candidates.append((Path(options.demo_build) / name, "made by make demo"))
    refused = []
    for directory, origin in candidates:
        why_not = _unusable(directory, name)
        if why_not is None:
            reporter.info(f"Using the {name} export in {directory} ({origin}); --exports DIR benches another")
            return directory
        if (directory / "manifest.json").exists():
            refused.append(f"{directory}: {why_not}")
    arch = None if name == "digits" else name
    reporter.info(f"Exporting {name} into {target} (no usable export"
                  + (f"; {'; '.join(refused)}" if refused else f" in {' or '.join(str(d) for d, _ in candidates)}")
                  + ")" + (": training takes a few minutes; `make demo` makes build/digits, which bench reuses"
                           if arch is None else ""))
    export_model(ExportOptions(output=target, arch=arch, image_size=options.image_size if arch else None,
                               force=True), reporter)
    return target


def _unusable(directory: Path, name: str) -> str | None:
    """Why ``directory`` cannot stand in for the built-in model ``name`` (None: it can)."""
    try:
        manifest = Manifest.read(directory)
    except ManifestError as exc:
        return str(exc)
    if manifest.name != name:
        return f"it holds model {manifest.name!r}, not {name!r}"
    if not (directory / manifest.model_file).is_file():
        return f"{manifest.model_file} is missing"
    return None


def _pool(manifest) -> ImagePool:
    """Digits encoded at the model's own input size: PNG for the greyscale digits model, JPEG for RGB models."""
    transform = manifest.preprocessing
    fmt = "PNG" if transform.color_mode == "L" else "JPEG"
    return pool_from_digits(PoolOptions(count=64, sizes=(transform.height,), formats=(fmt,)))


def _configs(options: BenchOptions, work: Path, name: str):
    base = RepositoryOptions(output=work / f"repo-{name}-default", monitoring=options.monitoring)
    configs = {DEFAULT_CONFIG: base,
               "batching off, 2 instances": replace(base, output=work / f"repo-{name}-nobatch", dynamic_batching=False)}
    if not options.quick:
        configs["batching on, 1 instance"] = replace(base, output=work / f"repo-{name}-1inst", classifier_instances=1)
    return configs


def _bench_model(export_dir: Path, work: Path, options: BenchOptions, reporter: Reporter) -> tuple[str, dict]:
    # the writer checks configs with tritonclient's protobuf schema: only when it writes
    from triton_deploy.repository.writer import generate_repository

    manifest = Manifest.read(export_dir)
    name = manifest.name
    pool = _pool(manifest)
    threads = os.cpu_count() or 1  # what the default repository's classifier instances share
    result: dict = {"export": str(export_dir), "input": list(manifest.input.shape), "pool": pool.description,
                    "target": TARGETS.get(name), "baseline_threads": threads, "baseline": {}, "configs": {}}

    # The same threads in both arrangements Triton can use: one session with every thread, or one Python worker
    # per instance each with its share (what the default repository runs). The best of them is the baseline.
    arrangements = [1] + ([threads] if threads > 1 else [])

    def measure_baseline(when: str) -> None:
        for workers in arrangements:
            for batch in options.baseline_batches:
                key = baseline_key(workers, threads // workers, batch)
                with reporter.step(f"{name}: in-process pipeline, {key} ({when})"):
                    m = driver.in_process(export_dir / manifest.model_file, manifest, pool, threads=threads,
                                          batch_size=batch, duration_s=options.measure_s, workers=workers).summary()
                # The baseline runs before and after the server measurements and keeps its better figure: on a
                # shared machine a burst of other work must not flatter the ratio by slowing the baseline.
                previous = result["baseline"].get(key)
                if previous is None or m["images_per_s"] > previous["images_per_s"]:
                    result["baseline"][key] = m | {"workers": workers, "batch": batch}

    measure_baseline("before the server runs")
    for label, repo_options in _configs(options, work, name).items():
        with reporter.step(f"{name}: writing the model repository ({label})"):
            generate_repository([export_dir], repo_options)
        result["configs"][label] = _bench_server(name, repo_options.output, label, options, pool, reporter)
    if not options.quick:
        measure_baseline("after the server runs")

    default = result["configs"][DEFAULT_CONFIG]
    best_key, best_baseline = max(result["baseline"].items(), key=lambda item: item[1]["images_per_s"])
    saturating = max(default["levels"].values(), key=lambda level: level["images_per_s"])
    candidates = [(saturating, 1)] + [(m, int(b)) for b, m in default.get("batched_requests", {}).items()]
    best, best_batch = max(candidates, key=lambda pair: pair[0]["images_per_s"])
    result["efficiency"] = {
        "triton_images_per_s": best["images_per_s"], "triton_concurrency": best["concurrency"],
        "triton_images_per_request": best_batch,
        "triton_single_image_images_per_s": saturating["images_per_s"],
        "in_process_images_per_s": best_baseline["images_per_s"], "in_process_arrangement": best_key,
        "ratio": round(best["images_per_s"] / best_baseline["images_per_s"], 3)
        if best_baseline["images_per_s"] else None,
        "single_image_ratio": round(saturating["images_per_s"] / best_baseline["images_per_s"], 3)
        if best_baseline["images_per_s"] else None,
    }
    return name, result


def _bench_server(name: str, repository: Path, label: str, options: BenchOptions, pool: ImagePool,
                  reporter: Reporter) -> dict:
    http_port, grpc_port, metrics_port = free_ports(3)
    server_options = ServerOptions(repository=repository, http_port=http_port, grpc_port=grpc_port,
                                   metrics_port=metrics_port, exit_timeout_s=10,
                                   log_file=repository.parent / f"{repository.name}.triton.log")
    out: dict = {"levels": {}}
    with reporter.step(f"{name}: starting Triton ({label})"):
        server = TritonServer(server_options).__enter__()
    try:
        with reporter.step(f"{name}: warming up every instance and batch path"):
            driver.drive(server.grpc_url, name, pool, concurrency=max(options.concurrencies),
                         duration_s=min(2.0, options.measure_s))
        with reporter.bar(len(options.concurrencies), f"{name}: {label}") as bar:
            for concurrency in options.concurrencies:
                before = metrics.from_statistics(driver.statistics(server.grpc_url))
                cpu_before = cpu_seconds(server)
                m = driver.drive(server.grpc_url, name, pool, concurrency=concurrency, duration_s=options.measure_s)
                after = metrics.from_statistics(driver.statistics(server.grpc_url))
                level = m.summary() | {"concurrency": concurrency,
                                       "cpu_ms_per_image": cpu_per_image(server, cpu_before, m)}
                level["server"] = {k: v.summary() for k, v in metrics.delta(before, after, prefix=name).items()}
                level["breakdown_ms"] = breakdown(name, level["mean_ms"], metrics.delta(before, after, name))
                out["levels"][str(concurrency)] = level
                bar.advance(1, f"c={concurrency}: {m.images_per_s:.0f} images/s")
        if label == DEFAULT_CONFIG:
            # The in-process baseline runs b images per pass; measure Triton with b images per request too, so the
            # efficiency compares like with like as well as single-image requests.
            out["batched_requests"] = {}
            for batch in (b for b in options.baseline_batches if b > 1):
                with reporter.step(f"{name}: {batch} images per request, concurrency {max(options.concurrencies)}"):
                    cpu_before = cpu_seconds(server)
                    m = driver.drive(server.grpc_url, name, pool, concurrency=max(options.concurrencies),
                                     duration_s=options.measure_s, batch_size=batch)
                out["batched_requests"][str(batch)] = m.summary() | {
                    "concurrency": max(options.concurrencies),
                    "cpu_ms_per_image": cpu_per_image(server, cpu_before, m)}
            out["protocols"] = {}
            for protocol in ("http", "grpc"):
                url = server.http_url if protocol == "http" else server.grpc_url
                with reporter.step(f"{name}: {protocol} at concurrency 1"):
                    m = driver.drive(url, name, pool, protocol=protocol, concurrency=1, duration_s=options.measure_s)
                out["protocols"][protocol] = m.summary()
    finally:
        server.stop()
    return out


def cpu_seconds(server) -> dict[str, float]:
    """CPU seconds used so far by Triton's own process ("triton core") and by each model's python-backend stubs
    (instances summed under the model's name)."""
    totals: dict[str, float] = {}
    pids = {server.process.pid: "triton core"} | {
        pid: instance.rsplit("_", 2)[0] if instance.count("_") >= 2 else instance
        for pid, instance in server.stubs.items()}
    for pid, name in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        totals[name] = totals.get(name, 0.0) + times.user + times.system
    return totals


def cpu_per_image(server, before: dict[str, float], measurement) -> dict[str, float]:
    """CPU milliseconds per image answered since ``before``, by process, with the load generator's beside them."""
    cpu = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(server).items()} | {
        "load generator": measurement.client_cpu_s}
    return {k: round(1000 * v / measurement.images, 4) for k, v in cpu.items()} if measurement.images else {}


def baseline_key(workers: int, threads_each: int, batch: int) -> str:
    """How an in-process measurement ran, e.g. ``2x1 b8``: 2 workers of 1 thread each, 8 images per pass."""
    return f"{workers}x{threads_each} b{batch}"


def breakdown(ensemble: str, client_mean_ms: float, per_model: dict[str, metrics.ModelTimes]) -> dict:
    """A request's mean time, split: client (latency outside Triton: client library, network, (de)serialisation),
    queue (summed over the three steps), each step's compute, and the rest of the server time (ensemble
    scheduling, python-backend IPC)."""
    times = per_model.get(ensemble)
    if times is None or not times.requests:
        return {}
    server_ms = times.per_request_ms("request_us")
    parts = {"client": client_mean_ms - server_ms, "queue": 0.0}
    for step in ("preprocess", "classifier", "postprocess"):
        member = per_model.get(f"{ensemble}_{step}")
        parts[step] = member.per_request_ms("compute_us") if member else 0.0
        parts["queue"] += member.per_request_ms("queue_us") if member else 0.0
    parts["server other"] = server_ms - parts["queue"] - parts["preprocess"] - parts["classifier"] - \
        parts["postprocess"]
    parts["total"] = client_mean_ms
    return {k: round(v, 3) for k, v in parts.items()}


# ---- report ---------------------------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Serving benchmark ({report['started']})", "",
             f"{m['cores']} cores, {m['platform']}, Python {m['python']}; load average "
             f"{m['load_average_start'][0]} at start, {m.get('load_average_end', ['?'])[0]} at end. "
             f"{report['options']['duration_s']:g} s per measurement; prediction metrics "
             f"{'on' if report['options'].get('monitoring', True) else 'off (--no-monitoring)'}. Load generator, server and in-process baseline "
             "share this machine (and any other work on it), so compare ratios within this run only.", "",
             "## 1. Serving efficiency (Triton gRPC, saturating load / same pipeline in one process)", "",
             "![images/s against concurrency](bench.png)", "",
             "Ratio = Triton's best images/s (single-image or multi-image requests) / the in-process pipeline's best. "
             "In-process arrangements: `WxT bB` = W worker threads, each with its own ONNX Runtime session of T "
             "intra-op threads, B images per pass; the single-image ratio is beside the ratio.", "",
             "| model | in-process images/s (arrangement: value) | Triton images/s (images per request, concurrency) | "
             "ratio | single-image ratio | target |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in report["models"].items():
        base = ", ".join(f"{key}: {v['images_per_s']:.0f}" for key, v in r["baseline"].items())
        e = r["efficiency"]
        target = f"≥ {r['target']}" if r["target"] else "-"
        met = "" if not r["target"] or e["ratio"] is None else (" (met)" if e["ratio"] >= r["target"] else " (not met)")
        lines.append(f"| {name} | {base} | {e['triton_images_per_s']:.0f} ({e['triton_images_per_request']}/req, "
                     f"c={e['triton_concurrency']}) | {e['ratio']}{met} | {e['single_image_ratio']} | {target} |")
    lines += ["", "## 2. Dynamic batching and classifier instances (gRPC, batch 1 per request)", "",
              "| model | configuration | concurrency | images/s | p50 ms | p99 ms | classifier avg batch | "
              "client CPU ms/req |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["models"].items():
        for label, config in r["configs"].items():
            for c, level in config["levels"].items():
                classifier = level["server"].get(f"{name}_classifier", {})
                lines.append(f"| {name} | {label} | {c} | {level['images_per_s']:.0f} | {level['p50_ms']:.2f} | "
                             f"{level['p99_ms']:.2f} | {classifier.get('average_batch', 0):.2f} | "
                             f"{level['client_cpu_ms_per_request']:.2f} |")
    lines += ["", "## 3. HTTP vs gRPC at concurrency 1", "",
              "| model | protocol | requests/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    for name, r in report["models"].items():
        for protocol, p in r["configs"][DEFAULT_CONFIG].get("protocols", {}).items():
            lines.append(f"| {name} | {protocol} | {p['requests'] / p['seconds']:.0f} | {p['p50_ms']:.2f} | "
                         f"{p['p99_ms']:.2f} |")
    lines += ["", f"## 4. Where a request's time goes (ms per request, gRPC, {DEFAULT_CONFIG})", "",
              "| model | concurrency | total | client | queue | preprocess | classifier | postprocess | server other |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["models"].items():
        for c, level in r["configs"][DEFAULT_CONFIG]["levels"].items():
            b = level["breakdown_ms"]
            if b:
                lines.append(f"| {name} | {c} | {b['total']:.2f} | {b['client']:.2f} | {b['queue']:.2f} | "
                             f"{b['preprocess']:.2f} | {b['classifier']:.2f} | {b['postprocess']:.2f} | "
                             f"{b['server other']:.2f} |")
    lines += ["", "Client = latency seen by the load generator minus the ensemble's request time in Triton; queue is "
              "summed over the three steps; compute = input + infer + output of each step (from the statistics API). "
              "Server other = the ensemble's request time minus its steps' queue and compute; the steps' timers "
              "overlap the ensemble's a little, so a small negative value means none.",
              "", "## 5. CPU per image at saturation, by process (default configuration, highest concurrency)", "",
              "What each process burnt per image answered: with every core busy, images/s is at most cores x 1000 / "
              "total, so the column that dominates is where to optimise.", "",
              "| model | images per request | images/s | triton core | preprocess | classifier | postprocess | "
              "load generator | total ms | ceiling images/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["models"].items():
        default = r["configs"][DEFAULT_CONFIG]
        # Single-image requests at the highest concurrency beside the multi-image ones: the difference is the fixed
        # cost of a request (gRPC, Triton core, python-backend hops), which is what the single-image ratio pays.
        saturating = default["levels"][str(max(int(c) for c in default["levels"]))]
        for batch, b in [("1", saturating), *default.get("batched_requests", {}).items()]:
            cpu = b.get("cpu_ms_per_image", {})
            steps = [cpu.get("triton core", 0.0), cpu.get(f"{name}_preprocess", 0.0),
                     cpu.get(f"{name}_classifier", 0.0), cpu.get(f"{name}_postprocess", 0.0),
                     cpu.get("load generator", 0.0)]
            total = sum(steps)
            ceiling = f"{m['cores'] * 1000 / total:.0f}" if total else "-"
            lines.append(f"| {name} | {batch} | {b['images_per_s']:.0f} | " + " | ".join(f"{v:.3f}" for v in steps)
                         + f" | {total:.2f} | {ceiling} |")
    lines.append("")
    return "\n".join(lines)
