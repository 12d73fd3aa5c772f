"""``make demo``: the whole path on the built-in digits model, end to end, with the real components.

1. train and export the digits CNN            triton-deploy export --output build/digits --force
2. generate the Triton model repository       triton-deploy repo build/digits --output model_repository
3. start the real Triton server               triton-deploy serve --repository model_repository
4. classify held-out digits written as PNG/JPEG files of several sizes, over HTTP and gRPC
5. stop the server (SIGTERM: Triton drains in-flight requests first)
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from .errors import TritonDeployError
from .progress import Reporter

BUILD = Path("build")
FORMATS = [(28, "PNG"), (64, "JPEG"), (96, "PNG"), (128, "JPEG"), (200, "PNG")]


def write_demo_images(folder: Path, count: int = 100) -> tuple[list[Path], list[int]]:
    """Held-out digits the model never saw in training, as image files in one folder per label."""
    from .export import digits

    images, labels = digits.load_digits_data().split("heldout")
    paths = []
    for i in range(count):
        size, fmt = FORMATS[i % len(FORMATS)]
        path = folder / str(labels[i]) / f"digit_{i:03d}_{size}px.{fmt.lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        digits.digit_image(images[i], size).save(buffer, format=fmt)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths, [int(label) for label in labels[:count]]


def classify_with_tritonclient(protocol: str, url: str, paths: list[Path], model: str = "digits",
                               batch: int = 16) -> list[tuple[str, float]]:
    """Send encoded files to the ensemble with Triton's own client; returns (top label, score) per file."""
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    client = client_module.InferenceServerClient(url)
    results = []
    for start in range(0, len(paths), batch):
        chunk = [p.read_bytes() for p in paths[start:start + batch]]
        image = client_module.InferInput("IMAGE", [len(chunk), 1], "BYTES")
        image.set_data_from_numpy(np.array(chunk, dtype=np.object_).reshape(-1, 1))
        response = client.infer(model, [image])
        labels, scores = response.as_numpy("LABELS"), response.as_numpy("SCORES")
        results.extend((label.decode(), float(score)) for label, score in zip(labels[:, 0], scores[:, 0]))
    return results


def run(reporter: Reporter) -> None:
    from .export.pipeline import ExportOptions, export_model
    from .repository.render import RepositoryOptions
    from .repository.writer import generate_repository
    from .server import ServerOptions, TritonServer, free_ports, port_is_free

    reporter.info("[bold]1. Export[/]  triton-deploy export --output build/digits --force")
    result = export_model(ExportOptions(output=BUILD / "digits", force=True), reporter)
    m = result.manifest
    reporter.info(f"   held-out accuracy {m.accuracy:.4f} on {m.dataset['heldout_size']} images; parity max |TF - ORT| "
                  f"{m.parity.max_abs_diff:.1e}, top-1 agreement {m.parity.top1_agreement:.0%}; "
                  f"{m.flops_per_image / 1e6:.0f} MFLOPs/image")

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
        reporter.info(f"[bold]4. Classify[/]  {len(paths)} held-out digits as PNG/JPEG files of 28-200 px "
                      f"in {BUILD / 'demo-images'}")
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            predictions = classify_with_tritonclient(protocol, url, paths)
            accuracy = np.mean([label == str(t) for (label, _), t in zip(predictions, truth)])
            reporter.info(f"   {protocol:4s} accuracy {accuracy:.3f} on {len(paths)} images")
        for path, (label, score), t in list(zip(paths, predictions, truth))[:5]:
            reporter.info(f"   {path.name:28s} -> {label} ({score:.3f})   true {t}")
    finally:
        reporter.info("[bold]5. Stop[/]  SIGTERM: Triton drains in-flight requests, then exits")
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
