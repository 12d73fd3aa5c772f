"""Load candidates into one real Triton (explicit model control) and measure them with the project's load driver.

The server runs on a private copy of the repository (hard links: only ``config.pbtxt`` files are ever rewritten,
and they are replaced, not edited), so the user's repository is untouched until the winner is written. A step whose
config changed is reloaded in place (``load_model``); Triton keeps serving the ensemble's other steps meanwhile.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from triton_deploy.contract import ADMIN_HEADER
from triton_deploy.errors import ServerError
from triton_deploy.loadtests import driver
from triton_deploy.loadtests.payloads import ImagePool
from triton_deploy.server import ServerOptions, TritonServer, free_ports

from .results import CandidateRejected, Measurement, Point


def link_copy(source: Path, target: Path) -> None:
    """``source`` copied to ``target`` with hard links where the filesystem allows (model files can be large)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.copytree(source, target, copy_function=link,
                    ignore=shutil.ignore_patterns("__pycache__", "*.before-tune-*"))


class TuningServer:
    """Triton in explicit model-control mode on ``work`` (a copy of the repository), serving ``ensemble``."""

    def __init__(self, work: Path, ensemble: str, log_file: Path) -> None:
        http, grpc, metrics = free_ports(3)
        self.work, self.ensemble = work, ensemble
        self.loaded: dict[str, str] = {}  # model -> the config text Triton runs now
        self.server = TritonServer(ServerOptions(
            repository=work, http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit",
            exit_timeout_s=10, log_file=log_file, extra_args=(f"--load-model={ensemble}",)))

    def start(self) -> None:
        self.server.__enter__()  # started and ready, or stopped again and raised

    def __enter__(self) -> TuningServer:
        if self.server.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def load(self, configs: dict[str, str]) -> float:
        """Write and reload every step whose config differs from what runs now; the seconds it took."""
        import tritonclient.http as httpclient  # the driver already loads it; kept beside its only use

        start = time.perf_counter()
        changed = {name: text for name, text in configs.items() if self.loaded.get(name) != text}
        # Over HTTP: the admin key goes as a plain header there (gRPC prefixes restricted-protocol metadata).
        client = httpclient.InferenceServerClient(self.server.http_url, network_timeout=300.0)
        headers = {ADMIN_HEADER: self.server.admin_key}
        try:
            for name, text in changed.items():
                path = self.work / name / "config.pbtxt"
                staging = path.with_suffix(".pbtxt.tmp")
                staging.write_text(text, encoding="utf-8")
                staging.replace(path)  # a new file: the hard-linked original keeps its content
                try:
                    client.load_model(name, headers=headers)
                except Exception as exc:  # Triton's reason, e.g. an instance that cannot start
                    self._put_back(client, name, headers)
                    raise CandidateRejected(f"{name}: {exc}") from None
                self.loaded[name] = text
            if not client.is_model_ready(self.ensemble):
                raise ServerError(f"{self.ensemble} is not ready after loading the candidate")
        finally:
            client.close()
        return time.perf_counter() - start

    def _put_back(self, client, name: str, headers: dict) -> None:
        path = self.work / name / "config.pbtxt"
        path.write_text(self.loaded[name], encoding="utf-8")
        try:
            client.load_model(name, headers=headers)
        except Exception as exc:
            raise ServerError(f"{name} did not load again with its previous config: {exc}") from None

    def warm_up(self, pool: ImagePool, concurrency: int, seconds: float) -> None:
        """Unmeasured load: new instances' first requests (ONNX Runtime's first runs, Python imports) are slow."""
        driver.drive(self.server.grpc_url, self.ensemble, pool, concurrency=concurrency, duration_s=seconds)

    def measure(self, pool: ImagePool, concurrencies: tuple[int, ...], window_s: float,
                warmup_s: float = 0.5) -> Measurement:
        """Closed-loop load at each concurrency for ``window_s``, after a short unmeasured warm-up."""
        url = self.server.grpc_url
        self.warm_up(pool, max(concurrencies), warmup_s)
        points = []
        for concurrency in concurrencies:
            m = driver.drive(url, self.ensemble, pool, concurrency=concurrency, duration_s=window_s)
            points.append(Point(concurrency, m.images_per_s, m.percentile(50), m.percentile(99), m.failures,
                                m.requests))
        return Measurement(tuple(points), window_s)
