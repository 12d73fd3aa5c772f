"""Load test a Triton classifier ensemble with Triton's own client library, over HTTP or gRPC.

Usage:
    locust -f loadtests/locustfile.py --config loadtests/locust.conf --host 127.0.0.1:8001 --protocol grpc \
        --headless -u 16 -r 8 -t 1m --csv results/run --html results/run.html --slo-p99-ms 250

Add a load shape by listing its file after this one: ``-f loadtests/locustfile.py,loadtests/shape_step.py`` (or
``shape_spike.py``). Each request sends ``--batch-size`` real encoded images picked at random from a pool (a folder
with ``--image-dir``, or digits rendered at ``--image-sizes`` in ``--image-formats``) to the ensemble ``--model`` and
checks that ``--top-k`` class ids came back per image. SLO flags make the run exit with code 3 when broken.
"""

from __future__ import annotations

import functools
import json
import logging
import time

import locust.stats
import numpy as np
from locust import User, constant, events, task
from locust.runners import WorkerRunner

from triton_deploy.clients.errors import TlsError, translate
from triton_deploy.clients.tls import TlsOptions
from triton_deploy.contract import CLASS_IDS, IMAGE, OUTPUTS
from triton_deploy.loadtests.payloads import ImagePool, PoolOptions, load_pool
from triton_deploy.loadtests.slo import SLO

SLO_EXIT_CODE = 3
logger = logging.getLogger("triton-loadtest")

_pool: ImagePool | None = None  # one per process, built in on_init
_open_clients: list = []  # every user's client until it is closed (see close_every_client)
_run_window: dict = {}  # when the test started, on the master or a single process (see write_run_window)

# Locust's "current" percentiles (the history CSV, latency.png, the web UI) look back 10 s by default, which smooths
# a latency spike away; 3 s still holds enough samples and matches how often workers report to the master.
locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW = 3  # plots.py labels latency.png with it


class ResponseError(Exception):
    """The server answered, but not with what a classifier must return."""


@events.init_command_line_parser.add_listener
def add_options(parser):
    group = parser.add_argument_group("Triton classifier")
    group.add_argument("--model", default="digits", help="ensemble to call (default digits)")
    group.add_argument("--protocol", choices=["http", "grpc"], default="http",
                       help="which user runs: TritonHttpUser or TritonGrpcUser (default http)")
    group.add_argument("--batch-size", type=int, default=1, help="images per request (default 1)")
    group.add_argument("--top-k", type=int, default=1, help="class ids every image must get back (default 1)")
    group.add_argument("--image-dir", default="", help="folder of images to send (default: rendered digits)")
    group.add_argument("--image-sizes", default="64", help="digit image sizes in pixels, e.g. 64,224 (default 64)")
    group.add_argument("--image-formats", default="PNG", help="digit image formats, e.g. PNG,JPEG (default PNG)")
    group.add_argument("--pool-size", type=int, default=64, help="how many digit images to render (default 64)")
    group.add_argument("--request-timeout", type=float, default=30.0, help="seconds per request (default 30)")
    # Locust's own --tls-cert/--tls-key serve its web UI: these are the clients' (triton-deploy's --tls-*).
    tls = parser.add_argument_group("TLS to Triton (gRPC to 'serve --tls-cert', or HTTPS through a gateway)")
    tls.add_argument("--triton-tls", action="store_true", help="TLS trusting the system's root certificates")
    tls.add_argument("--triton-tls-ca", default="", help="CA certificate the server's certificate is signed by "
                                                         "(turns TLS on)")
    tls.add_argument("--triton-tls-cert", default="", help="client certificate for mutual TLS (needs "
                                                           "--triton-tls-key)")
    tls.add_argument("--triton-tls-key", default="", help="the client certificate's private key")
    slo = parser.add_argument_group("SLO gate (exit code 3 when broken)")
    slo.add_argument("--slo-p95-ms", type=float, default=None, help="max p95 response time in ms")
    slo.add_argument("--slo-p99-ms", type=float, default=None, help="max p99 response time in ms")
    slo.add_argument("--slo-error-rate", type=float, default=None, help="max failed fraction, e.g. 0.01")
    shape = parser.add_argument_group("load shapes (shape_step.py, shape_spike.py)")
    shape.add_argument("--step-users", type=int, default=4, help="users added per step (default 4)")
    shape.add_argument("--step-seconds", type=float, default=10.0, help="seconds per step (default 10)")
    shape.add_argument("--steps", type=int, default=4, help="number of steps (default 4)")
    shape.add_argument("--spike-base-users", type=int, default=2, help="users before and after the spike")
    shape.add_argument("--spike-users", type=int, default=16, help="users during the spike")
    shape.add_argument("--spike-at", type=float, default=10.0, help="seconds before the spike starts")
    shape.add_argument("--spike-seconds", type=float, default=10.0, help="how long the spike lasts")
    shape.add_argument("--spike-total-seconds", type=float, default=30.0, help="length of the whole spike test")


@events.init.add_listener
def on_init(environment, **_kwargs):
    """Keep only the user class of ``--protocol`` and build this process's image pool."""
    global _pool
    options = environment.parsed_options
    if options is None:  # a library caller building its own Environment
        return
    if options.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {options.batch_size}")
    environment.user_classes = [u for u in environment.user_classes
                                if getattr(u, "protocol", options.protocol) == options.protocol]
    _pool = load_pool(PoolOptions(
        image_dir=options.image_dir or None, count=options.pool_size,
        sizes=tuple(int(s) for s in str(options.image_sizes).split(",") if s.strip()),
        formats=tuple(f for f in str(options.image_formats).split(",") if f.strip()),
    ))
    logger.info("image pool: %s", _pool.description)


@events.test_start.add_listener
def note_start(environment, **_kwargs):
    _run_window["start"] = time.time()


@events.quitting.add_listener
def write_run_window(environment, **_kwargs):
    """On the master (or a single process), ``CSV_PREFIX_window.json``: seconds from the start to the last request.
    Locust's own Requests/s divides by a time counted from before the workers spawned (a 3 s run with two workers
    read 16 s), so ``triton-deploy loadtest`` takes the run's length from here."""
    options = environment.parsed_options
    last = environment.stats.total.last_request_timestamp
    if options is None or isinstance(environment.runner, WorkerRunner) or not options.csv_prefix or not last:
        return
    seconds = last - _run_window.get("start", environment.stats.total.start_time)
    with open(f"{options.csv_prefix}_window.json", "w") as f:  # last_request ends plots.py's time line
        json.dump({"seconds": round(seconds, 3), "last_request": round(last, 3)}, f)


@events.quitting.add_listener
def check_slo(environment, **_kwargs):
    """The SLO gate: on the master (or a single process), name each broken objective and exit with code 3."""
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    slo = SLO(options.slo_p95_ms, options.slo_p99_ms, options.slo_error_rate)
    total = environment.stats.total
    broken = slo.violations(total.get_response_time_percentile(0.95) or 0.0,
                            total.get_response_time_percentile(0.99) or 0.0, total.fail_ratio, total.num_requests)
    for line in broken:
        logger.error("SLO broken: %s", line)
    if broken:
        environment.process_exit_code = SLO_EXIT_CODE


@events.test_stop.add_listener
@events.quitting.add_listener
def close_every_client(**_kwargs):
    """Close the clients of users whose ``on_stop`` never ran (killed at the stop timeout or while starting) while
    gevent still runs, rather than in garbage collection at interpreter exit: there a gRPC client's ``__del__``
    closing its channel hung the process after "Shutting down" (2 of 10 short runs; see ``_closing_once``)."""
    while _open_clients:
        _open_clients.pop().close()


class TritonUser(User):
    """What both protocols share: the payload, the timing and the ``request`` event. Subclasses only build their
    client and send one inference (``_infer`` returns the response size in bytes)."""

    abstract = True
    protocol = ""
    wait_time = constant(0)  # closed loop: each user sends its next request as soon as the last one returns

    def on_start(self):
        options = self.environment.parsed_options
        self.model = options.model
        self.batch_size = options.batch_size
        self.top_k = options.top_k
        self.timeout = options.request_timeout
        self.url = self.host.split("://", 1)[-1].rstrip("/") if self.host else "127.0.0.1:8000"
        self.tls = TlsOptions.from_flags(options.triton_tls_ca or None, options.triton_tls_cert or None,
                                         options.triton_tls_key or None, on=options.triton_tls)
        self.client = self.connect()
        _open_clients.append(self.client)

    def on_stop(self):
        if self.client in _open_clients:
            _open_clients.remove(self.client)
            self.client.close()

    @task
    def classify(self):
        images = (_pool or ImagePool([b""], "empty")).tensor(self.batch_size)
        start = time.perf_counter()
        length, exception = 0, None
        try:
            length = self.infer(images)
        except Exception as exc:  # every failure is a failed request in Locust's statistics, none stops the user
            # tritonclient's InferenceServerException has an empty repr, and Locust's failure report shows the repr:
            # carry the server's message instead, or what is wrong with TLS when that is the cause.
            exception = _tls_problem(exc, self.url, self.protocol, self.tls) or \
                (exc if exc.args else RuntimeError(str(exc)))
        self.environment.events.request.fire(
            request_type=self.protocol, name=f"{self.model} batch {self.batch_size}",
            response_time=(time.perf_counter() - start) * 1000.0, response_length=length, exception=exception,
            context={},
        )

    def check(self, class_ids: np.ndarray | None) -> None:
        if class_ids is None or class_ids.ndim != 2 or class_ids.shape[0] != self.batch_size:
            shape = None if class_ids is None else list(class_ids.shape)
            raise ResponseError(f"CLASS_IDS has shape {shape}, expected [{self.batch_size}, k]")
        if class_ids.shape[1] < self.top_k:
            raise ResponseError(f"{class_ids.shape[1]} class ids per image, fewer than --top-k {self.top_k}")

    def connect(self):
        raise NotImplementedError

    def infer(self, images: np.ndarray) -> int:
        raise NotImplementedError


class TritonHttpUser(TritonUser):
    protocol = "http"

    def connect(self):
        import tritonclient.http as httpclient  # geventhttpclient underneath: cooperative under Locust

        self.lib = httpclient
        return httpclient.InferenceServerClient(self.url, connection_timeout=self.timeout, network_timeout=self.timeout,
                                                **(self.tls.http_args() if self.tls else {}))

    def infer(self, images):
        inputs = [self.lib.InferInput(IMAGE, list(images.shape), "BYTES")]
        inputs[0].set_data_from_numpy(images, binary_data=True)
        outputs = [self.lib.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
        result = self.client.infer(self.model, inputs, outputs=outputs)
        self.check(result.as_numpy(CLASS_IDS))
        body = result.get_response()
        return len(json.dumps(body)) + sum(int(o.get("parameters", {}).get("binary_data_size", 0)) for o in body["outputs"])


class TritonGrpcUser(TritonUser):
    protocol = "grpc"
    _gevent_ready = False

    def connect(self):
        if not TritonGrpcUser._gevent_ready:
            # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
            import grpc.experimental.gevent

            grpc.experimental.gevent.init_gevent()  # gRPC's C core must yield to gevent, or users block each other
            TritonGrpcUser._gevent_ready = True
        # tritonclient (gRPC/aiohttp/gevent underneath): loaded when a server is called, not at start-up
        import tritonclient.grpc as grpcclient

        self.lib = grpcclient
        return _closing_once(grpcclient.InferenceServerClient)(self.url, **(self.tls.grpc_args() if self.tls else {}))

    def infer(self, images):
        inputs = [self.lib.InferInput(IMAGE, list(images.shape), "BYTES")]
        inputs[0].set_data_from_numpy(images)
        outputs = [self.lib.InferRequestedOutput(name) for name in OUTPUTS]
        result = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
        self.check(result.as_numpy(CLASS_IDS))
        return result.get_response().ByteSize()


_tls_problems: dict[tuple[str, str], Exception | None] = {}


def _tls_problem(exc: Exception, url: str, protocol: str, tls: TlsOptions | None) -> Exception | None:
    """The client's ``TlsError`` when TLS is why ``exc`` happened (an untrusted certificate, plaintext to a TLS port,
    a missing client certificate...), else None. Worked out once per distinct error: explaining a closed socket
    takes a TLS handshake with the server, not something to repeat for every failed request."""

    key = (type(exc).__name__, str(exc))
    if key not in _tls_problems:
        error = translate(exc, url=url, model="", protocol=protocol, tls=tls)
        _tls_problems[key] = RuntimeError(str(error)) if isinstance(error, TlsError) else None
    return _tls_problems[key]


@functools.cache
def _closing_once(client_class: type) -> type:
    """``client_class`` whose ``close`` acts once: tritonclient's ``__del__`` calls ``close`` again when the client is
    collected, closing the gRPC channel a second time at interpreter exit. Closing every client on stop without this
    still hung 1 of 10 short runs; with it, none of 30."""

    class ClosingOnce(client_class):
        _closed = False

        def close(self):
            if not self._closed:
                self._closed = True
                super().close()

    return ClosingOnce
