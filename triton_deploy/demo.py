"""``make demo``: the whole path on the built-in digits model, end to end, with the real components.

1. train and export the digits CNN            triton-deploy export --output build/digits --force
2. generate the Triton model repository       triton-deploy repo build/digits --output model_repository
3. start the real Triton server               triton-deploy serve --repository model_repository
4. classify held-out digits drawn the ways people send them (sizes, filters, polarity, margins, colour, JPEG...),
   over HTTP and gRPC                         triton-deploy classify build/demo-images --url ... --protocol grpc
5. a short Locust load test with SLO gates     triton-deploy loadtest --url ... --protocol grpc --users 4
6. the served model's accuracy on those labelled images, with plots
                                              triton-deploy evaluate build/demo-images --url ... --output build/eval
7. stop the server (SIGTERM: Triton drains in-flight requests first)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import fingerprint
from .errors import DemoError, TritonDeployError
from .export import digits, render
from .loadtests.runner import LoadTestOptions, run_loadtest, summary_table
from .loadtests.slo import SLO
from .progress import Reporter
from .repository.render import RepositoryOptions
from .server import ServerOptions, TritonServer, free_ports, port_is_free

BUILD = Path("build")
DEMO_IMAGES = 300


def write_demo_images(folder: Path, count: int = DEMO_IMAGES, seed: int = 7) -> tuple[list[Path], list[int]]:
    """Held-out digits the model never saw in training, each drawn with a random rendering (any size, filter,
    polarity, margin, colour, compression: ``render.sample_renderings`` with its own seed), in one folder per label."""
    images, labels = digits.load_digits_data().split("heldout")
    renderings = render.sample_renderings(count, np.random.default_rng(seed))
    shutil.rmtree(folder, ignore_errors=True)  # files of an earlier run would join the labelled set
    paths = []
    for i, rendering in enumerate(renderings):
        suffix = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[rendering.format]
        path = folder / str(labels[i]) / f"digit_{i:03d}_{rendering.size}px.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render.render(images[i], rendering, noise_seed=i))
        paths.append(path)
    return paths, [int(label) for label in labels[:count]]


def classify_folder(protocol: str, url: str, folder: Path) -> list[dict]:
    """Run ``triton-deploy classify FOLDER --json`` and return its records (one per image)."""
    command = [sys.executable, "-m", "triton_deploy.cli", "classify", str(folder), "--url", url,
               "--protocol", protocol, "--top-k", "3", "--json", "--quiet"]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise DemoError(f"triton-deploy classify exited {completed.returncode}: {completed.stderr.strip()}")
    return [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]


def run(reporter: Reporter) -> None:
    # the export pipeline loads onnx, and TensorFlow when it trains: only when it runs
    from .export.pipeline import ExportOptions, export_model
    from .repository.writer import generate_repository

    reporter.info("[bold]1. Export[/]  triton-deploy export --output build/digits --force")
    exported = export_model(ExportOptions(output=BUILD / "digits", force=True), reporter)
    # What this export was made from, so the test suite can reuse it instead of training the same model again.
    fingerprint.record(BUILD / "digits")
    m = exported.manifest
    # the built-in digits model records all three
    assert m.dataset is not None and m.flops_per_image is not None and m.robustness is not None
    worst = m.robustness.worst
    reporter.info(f"   held-out accuracy {m.accuracy:.4f} on {m.dataset['heldout_size']} images; worst robustness "
                  f"condition {worst.name} {worst.accuracy:.4f}; parity max |TF - ORT| {m.parity.max_abs_diff:.1e}, "
                  f"top-1 agreement {m.parity.top1_agreement:.0%}; {m.flops_per_image / 2e6:.0f}M multiply-adds/image")
    reporter.info("   robustness (held-out digits drawn each way; accuracy): " + ", ".join(
        f"{c.name} {c.accuracy:.3f}" for c in m.robustness.conditions))

    reporter.info("[bold]2. Repository[/]  triton-deploy repo build/digits --output model_repository")
    repo = generate_repository([BUILD / "digits"], RepositoryOptions(output=Path("model_repository")))
    reporter.info(f"   {', '.join(repo.models)} (classifier version {repo.ensembles['digits']})")

    reporter.info("[bold]3. Serve[/]  triton-deploy serve --repository model_repository")
    ports = [8000, 8001, 8002]
    if not all(port_is_free("127.0.0.1", p) for p in ports):
        ports = free_ports(3)
    options = ServerOptions(repository=Path("model_repository"), http_port=ports[0], grpc_port=ports[1],
                            metrics_port=ports[2], log_file=BUILD / "triton.log", exit_timeout_s=10)
    server = TritonServer(options)
    server.start()
    try:
        with reporter.step(f"Waiting for Triton to load the ensemble (log: {options.log_file})"):
            server.wait_ready()
        reporter.info(f"   HTTP {server.http_url}   gRPC {server.grpc_url}   metrics {server.metrics_url}")

        paths, truth = write_demo_images(BUILD / "demo-images")
        reporter.info(f"[bold]4. Classify[/]  {len(paths)} held-out digits drawn at random sizes, filters, polarities, "
                      f"margins, colours and compressions: "
                      f"triton-deploy classify {BUILD / 'demo-images'} --protocol grpc|http --json")
        truth_by_path = {str(path): label for path, label in zip(paths, truth, strict=True)}
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            records = classify_folder(protocol, url, BUILD / "demo-images")
            correct = [r["predictions"][0]["label"] == str(truth_by_path[r["source"]]) for r in records]
            reporter.info(f"   {protocol:4s} accuracy {np.mean(correct):.3f} on {len(records)} images")
        first_of_each: dict[int, dict] = {}
        for record in records:
            first_of_each.setdefault(truth_by_path[record["source"]], record)
        for record in list(first_of_each.values())[:5]:  # a few rows, each of another digit
            top = ", ".join(f"{p['label']} ({p['score']:.3f})" for p in record["predictions"])
            source = record["source"]
            reporter.info(f"   {Path(source).name:28s} -> {top}   true {truth_by_path[source]}")

        reporter.info(f"[bold]5. Load test[/]  triton-deploy loadtest --url {server.grpc_url} --protocol grpc "
                      "--users 4 --duration 10s --slo-p99-ms 1000 --slo-error-rate 0")

        result = run_loadtest(LoadTestOptions(
            output=BUILD / "loadtest", url=server.grpc_url, protocol="grpc", users=4, duration_s=10,
            metrics_url=server.metrics_url, slo=SLO(p99_ms=1000, error_rate=0.0)), reporter)
        reporter.info(summary_table(result.summary))
        server_view = result.directory / "server.md"
        if server_view.exists():  # Triton's own view of the same requests: per-step queue, compute and batch size
            reporter.info("   Triton's view of the same requests (from its metrics):")
            reporter.info(server_view.read_text().rstrip())
        reporter.info(f"   report, CSVs and plots in {result.directory}")

        reporter.info(f"[bold]6. Evaluate[/]  triton-deploy evaluate {BUILD / 'demo-images'} --url {server.grpc_url} "
                      f"--protocol grpc --model digits --output {BUILD / 'eval'} --force")
        # the client stack (tritonclient) and matplotlib only when the command runs
        from .clients.evaluate import EvaluateOptions, evaluate

        evaluation = evaluate(EvaluateOptions(data_dir=BUILD / "demo-images", output=BUILD / "eval",
                                              url=server.grpc_url, protocol="grpc", model="digits", force=True),
                              reporter)
        scores = evaluation.scores[0]
        reporter.info(f"   accuracy {scores.accuracy:.4f} on {scores.images} images (top-3 "
                      f"{scores.top_k.get(3, float('nan')):.4f}); confusion plot {BUILD / 'eval' / 'confusion.png'}, "
                      f"mistakes {BUILD / 'eval' / 'errors.png'}, report {BUILD / 'eval' / 'report.md'}")
    finally:
        reporter.info("[bold]7. Stop[/]  SIGTERM: Triton drains in-flight requests, then exits")
        status = server.stop()
        reporter.info(f"   tritonserver exited with status {status}")


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    reporter = Reporter()
    try:
        run(reporter)
    except TritonDeployError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    reporter.info("[bold green]Demo complete.[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
