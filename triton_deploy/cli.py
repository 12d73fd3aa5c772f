"""``triton-deploy``: a thin command line over the typed core.

Each subcommand turns its flags into a frozen options dataclass and calls one function; everything it does is
callable from Python. Errors from the core are ``TritonDeployError`` subclasses: one line on stderr, the error's own
exit code, a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .clients.cli import add_classify
from .cliargs import add_common_flags, float_list, int_list
from .errors import TritonDeployError, UsageError
from .export.optimize_cli import add_optimize, add_tensorrt_check
from .loadtests.cli import add_bench, add_loadtest
from .progress import Reporter

PROG = "triton-deploy"


class _Parser(argparse.ArgumentParser):
    """argparse with a 'did you mean' hint for misspelt options and subcommands."""

    def error(self, message: str):  # noqa: D401  (argparse API)
        hint = ""
        match = re.search(r"unrecognized arguments: (\S+)", message) or re.search(r"invalid choice: '([^']+)'", message)
        if match:
            close = difflib.get_close_matches(match.group(1).split("=")[0], sorted(_known_words(self)), n=1)
            if close:
                hint = f" (did you mean {close[0]}?)"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def _known_words(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string and subcommand name of ``parser`` and its subparsers."""
    words: set[str] = set()
    for action in parser._actions:
        words.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            words.update(action.choices)
            for subparser in action.choices.values():
                words |= _known_words(subparser)
    return words



# ---- export ---------------------------------------------------------------------------------------------------


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a Keras/TensorFlow model to a validated ONNX artifact",
                       description="Train or load a model, convert it to ONNX with tf2onnx, and validate it "
                                   "(ONNX checker, shape inference, TensorFlow vs ONNX Runtime parity).")
    source = p.add_argument_group("model source (one per run)")
    source.add_argument("--model", default="digits", help="built-in model to train (default: digits)")
    source.add_argument("--keras-model", type=Path, metavar="PATH", help="a .keras or .h5 model file")
    source.add_argument("--saved-model", type=Path, metavar="DIR", help="a TensorFlow SavedModel directory")
    source.add_argument("--arch", metavar="NAME", help="a keras.applications architecture with random weights: "
                                                       "mobilenet_v2, resnet50, efficientnet_b0, mobilenet_v3_small")
    source.add_argument("--weights", type=Path, metavar="FILE", help="weights for --arch (.weights.h5)")
    source.add_argument("--image-size", type=int, metavar="N", help="input size for --arch (default 224)")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="export directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--name", help="model name in the manifest (default: from the source)")
    p.add_argument("--labels", type=Path, metavar="FILE", help="class labels, one per line")
    p.add_argument("--samples", type=Path, metavar="DIR",
                   help="images for parity (and accuracy, when they sit in one folder per label)")
    p.add_argument("--outputs", dest="output_kind", default="auto", choices=["auto", "logits", "probabilities"],
                   help="what the model's output holds (default: detect)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--nchw", action="store_true", help="NCHW input instead of NHWC")
    p.add_argument("--input-name", default="image", help="ONNX input name (default: image)")
    p.add_argument("--output-name", help="ONNX output name (default: logits or probabilities)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance, max |TF - ORT| (default 1e-4)")
    p.add_argument("--min-agreement", type=float, default=1.0, help="required top-1 agreement (default 1.0)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs for the digits model (default 8)")
    p.add_argument("--tflite", action="store_true",
                   help="also write model.tflite (LiteRT, float32) for Keras sources, validated with LiteRT's "
                        "interpreter against TensorFlow within --atol")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    norm = p.add_argument_group("preprocessing overrides (default: from the model source)")
    norm.add_argument("--scale", type=float, help="pixel multiplier, e.g. 0.00392 for 1/255")
    norm.add_argument("--mean", type=float_list, help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    norm.add_argument("--std", type=float_list, help="per-channel std after scaling")
    norm.add_argument("--channel-order", choices=["RGB", "BGR"])
    add_common_flags(p)
    p.set_defaults(handler=_run_export)



def _run_export(args: argparse.Namespace, reporter: Reporter) -> int:
    from .export.pipeline import ExportOptions, export_model

    overrides = {k: getattr(args, k) for k in ("scale", "mean", "std", "channel_order") if getattr(args, k) is not None}
    options = ExportOptions(
        output=args.output, model=args.model, keras_model=args.keras_model, saved_model=args.saved_model,
        arch=args.arch, weights=args.weights, image_size=args.image_size, name=args.name, labels_file=args.labels,
        samples=args.samples, output_kind=args.output_kind, opset=args.opset, nchw=args.nchw, atol=args.atol,
        min_agreement=args.min_agreement, input_name=args.input_name, output_name=args.output_name,
        epochs=args.epochs, seed=args.seed, force=args.force, tflite=args.tflite, transform_overrides=overrides,
    )
    result = export_model(options, reporter)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        m = result.manifest
        accuracy = f"{m.accuracy:.4f}" if m.accuracy is not None else "n/a (no labelled samples)"
        reporter.info(
            f"Exported [bold]{m.name}[/] to {result.output}\n"
            f"  model      {summary['model']}  (opset {m.opset}, sha256 {m.model_sha256[:12]}...)\n"
            f"  input      {m.input.name} {list(m.input.shape)} {m.input.dtype} {m.input.layout}\n"
            f"  output     {m.output.name} {list(m.output.shape)} ({m.output_kind})\n"
            f"  parity     max |TF - ORT| = {m.parity.max_abs_diff:.2e} (atol {m.parity.atol:g}), "
            f"top-1 agreement {m.parity.top1_agreement:.1%} on {m.parity.samples} samples\n"
            f"  accuracy   {accuracy}"
            + (f"\n  compute    {m.flops_per_image / 2e6:.1f}M multiply-adds ({m.flops_per_image / 1e6:.0f} MFLOPs) per image"
               if m.flops_per_image else "")
            + (f"\n  tflite     {summary['tflite']['file']}  (LiteRT max |TF - LiteRT| = "
               f"{summary['tflite']['validation']['max_abs_diff']:.2e}, "
               f"{summary['tflite']['latency_ms_batch1']['p50']:.2f} ms per image, 1 thread)"
               if "tflite" in summary else "")
        )
    return 0


# ---- repo -----------------------------------------------------------------------------------------------------


def _add_repo(sub) -> None:
    from .repository.render import BACKENDS, RepositoryOptions

    d = RepositoryOptions()
    p = sub.add_parser("repo", help="generate a Triton model repository (preprocess -> classifier -> postprocess)",
                       description="Render, validate and write a Triton model repository from export directories. "
                                   "A new export of the same model becomes the next classifier version.")
    p.add_argument("exports", nargs="+", type=Path, metavar="EXPORT_DIR", help="directories written by 'export'")
    p.add_argument("--output", "-o", type=Path, default=d.output, help=f"repository directory (default {d.output})")
    p.add_argument("--classifier-backend", choices=BACKENDS, default=d.classifier_backend,
                   help="python (local server, default), onnxruntime (NGC container), tensorrt (GPU plan)")
    p.add_argument("--prefix", help="common prefix of the four model names (default: the export's name)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help=f"default {d.max_batch_size}")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"labels returned per image (default {d.top_k})")
    p.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                   help="turn Triton's dynamic batcher off")
    p.add_argument("--preferred-batch-sizes", type=int_list, default=(), metavar="N,N",
                   help="dynamic batcher preferred sizes (default: let Triton fill up to the max)")
    p.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us,
                   help="how long the classifier's batcher waits to fill a batch (default: 0 on CPU, where waiting "
                        "only adds latency; 500 on GPU)")
    p.add_argument("--step-queue-delay-us", type=int, default=d.step_queue_delay_us,
                   help=f"the same for preprocess/postprocess (default {d.step_queue_delay_us}: no waiting)")
    p.add_argument("--preprocess-instances", type=int, default=d.preprocess_instances)
    p.add_argument("--classifier-instances", type=int, default=d.classifier_instances,
                   help="classifier instances (default: 2 on CPU, each with half the cores; 1 on GPU)")
    p.add_argument("--postprocess-instances", type=int, default=d.postprocess_instances)
    p.add_argument("--instance-kind", choices=["cpu", "gpu"], default=d.instance_kind,
                   help="where classifier instances run (default cpu)")
    p.add_argument("--version-policy", default=d.version_policy,
                   help="classifier versions served: latest:N, all, specific:1,2 (default latest:1)")
    p.add_argument("--keep-versions", type=int, help="delete all but the newest N classifier versions")
    p.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per classifier instance "
                                                        "(default: the server's CPUs / instances)")
    p.add_argument("--inter-op-threads", type=int, default=d.inter_op_threads)
    p.add_argument("--session-batch-size", type=int, default=d.session_batch_size, metavar="N",
                   help="images per ONNX Runtime call: a larger dynamic batch is split (default: sized so one "
                        "call's activations fit the CPU caches; 0: the whole batch in one call)")
    add_common_flags(p)
    p.set_defaults(handler=_run_repo)



def _run_repo(args: argparse.Namespace, reporter: Reporter) -> int:
    from .repository.render import RepositoryOptions
    from .repository.writer import generate_repository

    options = RepositoryOptions(
        output=args.output, classifier_backend=args.classifier_backend, prefix=args.prefix,
        max_batch_size=args.max_batch_size, top_k=args.top_k, dynamic_batching=args.dynamic_batching,
        preferred_batch_sizes=args.preferred_batch_sizes, max_queue_delay_us=args.max_queue_delay_us,
        step_queue_delay_us=args.step_queue_delay_us,
        preprocess_instances=args.preprocess_instances, classifier_instances=args.classifier_instances,
        postprocess_instances=args.postprocess_instances, instance_kind=args.instance_kind,
        version_policy=args.version_policy, keep_versions=args.keep_versions,
        intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads,
        session_batch_size=args.session_batch_size,
    )
    with reporter.step(f"Generating the model repository in {args.output}"):
        result = generate_repository(args.exports, options)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        versions = ", ".join(f"{name} (classifier version {v})" for name, v in result.ensembles.items())
        reporter.info(f"Wrote {result.output}: {len(result.models)} models; ensembles: {versions}")
    return 0


# ---- serve / stop ---------------------------------------------------------------------------------------------

DEFAULT_PID_FILE = Path(".triton-deploy/serve.json")


def _add_serve(sub) -> None:
    from .server import ServerOptions

    d = ServerOptions(repository=Path("model_repository"))
    p = sub.add_parser("serve", help="run the real Triton server on a model repository",
                       description="Start tritonserver (from the nvidia-pytriton wheel), wait until every model is "
                                   "ready, and forward SIGINT/SIGTERM so Triton drains in-flight requests.")
    p.add_argument("--repository", type=Path, default=d.repository, help="model repository (default model_repository)")
    p.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--http-port", type=int, default=d.http_port)
    p.add_argument("--grpc-port", type=int, default=d.grpc_port)
    p.add_argument("--metrics-port", type=int, default=d.metrics_port)
    p.add_argument("--exit-timeout", type=int, default=d.exit_timeout_s, metavar="SECONDS",
                   help="how long Triton drains in-flight requests on shutdown (default 30)")
    p.add_argument("--ready-timeout", type=float, default=d.ready_timeout_s, metavar="SECONDS")
    p.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default=d.model_control_mode,
                   help="none (default) never lets a caller load models")
    p.add_argument("--log-verbose", type=int, default=d.log_verbose)
    p.add_argument("--log-file", type=Path, help="write Triton's log here (default: a file in the temp dir)")
    p.add_argument("--shm-default-bytes", type=int, default=d.shm_default_bytes,
                   help="python-backend shared memory per model instance")
    p.add_argument("--shm-growth-bytes", type=int, default=d.shm_growth_bytes)
    p.add_argument("--http-max-input-size", type=_positive_int, default=d.http_max_input_size, metavar="BYTES",
                   help="largest HTTP request body Triton accepts (default 33554432 = 32 MiB, the per-image limit); "
                        "only Triton releases with this flag enforce it, the wheel's 2.51 does not")
    p.add_argument("--allow-uncapped-http", action="store_true",
                   help="serve on a non-loopback --host even though this Triton cannot cap HTTP request bodies "
                        "(a proxy in front caps them)")
    p.add_argument("--admin-key", default=os.environ.get("TRITON_ADMIN_KEY"),
                   help="header value that unlocks the model-repository/config/logging/trace APIs "
                        "(default: $TRITON_ADMIN_KEY or a random key)")
    p.add_argument("--unrestricted-apis", dest="restrict_apis", action="store_false",
                   help="leave the admin APIs open (not recommended)")
    p.add_argument("--keep-healthy-models", action="store_true",
                   help="serve the models that load even if others fail (readiness stays false and the failures "
                        "are listed); default: fail fast with the model's own error")
    p.add_argument("--stub-failure", choices=["restart", "exit"], default="restart",
                   help="when a python-backend stub dies: restart Triton (default) or exit with an error")
    p.add_argument("--max-restarts", type=int, default=3, metavar="N",
                   help="stub failures survived by restarting before serve gives up (default 3)")
    p.add_argument("--background", action="store_true", help="return once ready; stop with 'triton-deploy stop'")
    p.add_argument("--pid-file", type=Path, default=DEFAULT_PID_FILE, help=f"for --background (default "
                                                                           f"{DEFAULT_PID_FILE})")
    add_common_flags(p)
    p.set_defaults(handler=_run_serve)

    s = sub.add_parser("stop", help="stop a server started with 'serve --background'")
    s.add_argument("--pid-file", type=Path, default=DEFAULT_PID_FILE)
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Triton to drain and exit")
    add_common_flags(s)
    s.set_defaults(handler=_run_stop)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of bytes, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {text}")
    return value


def _run_serve(args: argparse.Namespace, reporter: Reporter) -> int:
    import signal

    from .errors import ServerError
    from .server import HTTP_MAX_INPUT_SIZE_FLAG, ServerOptions, TritonServer

    options = ServerOptions(
        repository=args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, exit_timeout_s=args.exit_timeout, model_control_mode=args.model_control_mode,
        log_verbose=args.log_verbose, shm_default_bytes=args.shm_default_bytes, shm_growth_bytes=args.shm_growth_bytes,
        restrict_apis=args.restrict_apis, admin_key=args.admin_key, ready_timeout_s=args.ready_timeout,
        log_file=args.log_file, keep_healthy_models=args.keep_healthy_models,
        http_max_input_size=args.http_max_input_size,
    )
    server = TritonServer(options)
    if not _is_loopback(args.host) and server.http_max_input_size is None and not args.allow_uncapped_http:
        # Fail closed: an exposed Triton 2.51 reads any HTTP body whole (400 MB measured), growing shared memory.
        raise UsageError(f"--host {args.host} exposes the server, but this Triton cannot cap HTTP request bodies "
                         f"(no {HTTP_MAX_INPUT_SIZE_FLAG})",
                         hint="bind to 127.0.0.1, or put a proxy that caps request bodies in front and add "
                              "--allow-uncapped-http")
    server.start()
    try:
        with reporter.step(f"Starting Triton on {args.repository} (log: {server.log_path})"):
            server.wait_ready()
    except BaseException:
        server.stop()
        raise
    endpoints = {"pid": server.process.pid, "http": server.http_url, "grpc": server.grpc_url,
                 "metrics": server.metrics_url, "log": str(server.log_path), "repository": str(args.repository),
                 "failed_models": server.failed_models, "http_max_input_size": server.http_max_input_size}
    if args.json:
        print(json.dumps(endpoints), flush=True)
    else:
        reporter.info(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
    if server.http_max_input_size is None:
        print(f"{PROG} serve: warning: this Triton ({server.version() or 'version unknown'}) cannot cap HTTP request "
              f"bodies (no {HTTP_MAX_INPUT_SIZE_FLAG}); the Helm chart's image does. If you expose this server, put a "
              f"proxy that caps request bodies in front of it", file=sys.stderr, flush=True)
    for name, reason in server.failed_models.items():
        print(f"{PROG} serve: model '{name}' failed to load and is not served (readiness stays false): "
              f"{reason.splitlines()[0] if reason else 'unknown reason'}", file=sys.stderr, flush=True)
    if args.background:
        args.pid_file.parent.mkdir(parents=True, exist_ok=True)
        args.pid_file.write_text(json.dumps(endpoints | {"admin_key": server.admin_key}) + "\n")
        args.pid_file.chmod(0o600)  # it holds the admin key
        reporter.info(f"Running in the background (pid {server.process.pid}); stop it with 'triton-deploy stop'")
        return 0

    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True  # stubs exit while Triton unloads: not a failure to restart for
        if server.process.poll() is None:
            server.process.send_signal(signum)  # Triton drains in-flight requests, then exits

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    restarts = 0
    while (status := server.poll(1.0)) is None:
        dead = {} if stopping else server.dead_stubs()
        if not dead or stopping:
            continue
        what = ", ".join(f"'{name}' (pid {pid})" for pid, name in dead.items())
        # Triton 2.51 would answer "Stub process ... is not healthy" for that model forever while still ready.
        if args.stub_failure == "exit" or restarts >= args.max_restarts:
            server.stop()
            raise ServerError(f"python-backend stub {what} died; Triton stopped after {restarts} restart(s)",
                              hint="see the log; --stub-failure restart and --max-restarts N restart it")
        restarts += 1
        print(f"{PROG} serve: python-backend stub {what} died; restarting Triton ({restarts}/{args.max_restarts})",
              file=sys.stderr, flush=True)
        server.restart()
        if stopping:  # a signal arrived during the restart
            server.stop()
        else:
            print(f"{PROG} serve: Triton is ready again (pid {server.process.pid})", file=sys.stderr, flush=True)
    server.stop()  # already exited: unlinks shared memory a dead stub left behind
    reporter.info(f"Triton exited with status {status}")
    return status


def _run_stop(args: argparse.Namespace, reporter: Reporter) -> int:
    import signal
    import time

    from .errors import ServerError

    try:
        endpoints = json.loads(args.pid_file.read_text())
    except FileNotFoundError:
        raise ServerError(f"{args.pid_file} not found: no background server to stop", hint="check --pid-file") from None
    pid = int(endpoints["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        args.pid_file.unlink(missing_ok=True)
        reporter.info(f"Server {pid} was not running")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        os.kill(pid, signal.SIGKILL)
        raise ServerError(f"server {pid} did not exit within {args.timeout:.0f} s and was killed",
                          hint="raise --timeout")
    args.pid_file.unlink(missing_ok=True)
    reporter.info(f"Stopped the server {pid}")
    return 0


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


# ---- entry point ----------------------------------------------------------------------------------------------

# In the order `--help` lists them: the pipeline first, then what builds on it.
SUBCOMMANDS: list[Callable] = [_add_export, _add_repo, _add_serve, add_classify, add_loadtest, add_bench,
                               add_optimize, add_tensorrt_check]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Deploy image classifiers on NVIDIA Triton Inference Server.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ info logs would bury our progress output
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = Reporter(quiet=getattr(args, "quiet", False))
    try:
        return args.handler(args, reporter)
    except TritonDeployError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130




if __name__ == "__main__":
    sys.exit(main())
