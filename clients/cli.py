"""``triton-deploy classify PATH... --url HOST:PORT``: classify image files with a served model.

The parser builds a frozen ``ClassifyOptions`` and calls ``classify_files``. One line per image on stdout (a JSON
object with ``--json``), in the order of the arguments; an image that fails is reported by name on stderr while the
others still print, and the exit code is 0 only if every image was classified.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from triton_deploy.cliargs import add_common_flags
from triton_deploy.errors import Problem, UsageError, raise_problems
from triton_deploy.spec import MANIFEST_FILE, Manifest

from .errors import AccuracyGateError, DatasetError, IncompleteRunError
from .paths import expand_paths
from .tls import TlsOptions, add_tls_flags, tls_from_args

if TYPE_CHECKING:  # the client stack (tritonclient, numpy, Pillow) is imported when the command runs
    from triton_deploy.progress import Reporter

    from .results import Outcome

PROGRESS_THRESHOLD = 20  # fewer images than this finish before a bar would be worth drawing
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


@dataclass(frozen=True)
class ClassifyOptions:
    paths: tuple[str, ...]
    url: str | None = None
    protocol: str = "http"
    model: str = "digits"
    top_k: int | None = None
    batch_size: int | None = None
    concurrency: int = 4
    shared_memory: bool = False
    preprocess: str = "server"
    timeout_s: float = 60.0
    ready_timeout_s: float = 30.0
    retries: int = 3
    admin_key: str | None = None
    manifest: Path | None = None  # an export's manifest.json (or its directory): preprocessing for preprocess="client"
    headers: dict[str, str] = field(default_factory=dict)
    tls: TlsOptions | None = None  # None: plaintext
    json: bool = False

    def problems(self) -> list[Problem]:
        """What only the command checks; the client's own settings (``--concurrency``, ``--url``, ...) are
        ``ClassifierOptions``' problems, reported with its exit code when the client is made."""
        problems: list[Problem] = []
        if self.manifest is not None and self.preprocess != "client":
            problems.append(("--manifest is only used with --preprocess client", "add --preprocess client"))
        return problems

    def check(self) -> None:
        raise_problems(self.problems())


def add_classify(sub) -> None:
    p = sub.add_parser("classify", help="classify image files with a model served by Triton",
                       description="Send images to a served classifier (the ensemble made by 'repo') and print the "
                                   "top-k labels per image. Exit code 0 only if every image was classified.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (searched recursively) or globs")
    _add_connection_flags(p, protocol="http")
    p.add_argument("--top-k", type=int, metavar="K", help="ranked answers per image (default: all the model gives)")
    p.add_argument("--shared-memory", action="store_true", help="pass tensors through system shared memory "
                                                                "(client on the server's host only; registering "
                                                                "regions needs --admin-key)")
    p.add_argument("--preprocess", choices=["server", "client"], default="server",
                   help="where images are decoded and normalised (client needs --manifest or --admin-key)")
    p.add_argument("--manifest", type=Path, metavar="EXPORT_DIR/manifest.json",
                   help="with --preprocess client: take the preprocessing from the model's export instead of the "
                        "server's config (which needs --admin-key)")
    add_common_flags(p, json_help="one JSON object per image on stdout")
    p.set_defaults(handler=_run_classify)


def _add_connection_flags(p: argparse.ArgumentParser, *, protocol: str) -> None:
    """How to reach the served model: the flags ``classify`` and ``evaluate`` share."""
    p.add_argument("--url", metavar="HOST:PORT", help="server address (default 127.0.0.1:8000 for http, :8001 for "
                                                      "grpc)")
    p.add_argument("--protocol", choices=["http", "grpc"], default=protocol, help=f"default {protocol}")
    p.add_argument("--model", default="digits", help="the ensemble's name (default digits)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per request (default: the model's max batch "
                                                               "size if readable, else 8)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight (default 4)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per request (default 60)")
    p.add_argument("--ready-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the model to be ready (default 30)")
    p.add_argument("--retries", type=int, default=3, help="retries on connection failures and 503 (default 3)")
    p.add_argument("--admin-key", default=os.environ.get("TRITON_ADMIN_KEY"),
                   help="sent for shared-memory registration and model configs (default: $TRITON_ADMIN_KEY)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", type=_header,
                   help="extra header on every request, e.g. for a gateway (repeatable)")
    add_tls_flags(p)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def _run_classify(args: argparse.Namespace, reporter: Reporter) -> int:
    options = ClassifyOptions(
        paths=tuple(args.paths), url=args.url, protocol=args.protocol, model=args.model, top_k=args.top_k,
        batch_size=args.batch_size, concurrency=args.concurrency, shared_memory=args.shared_memory,
        preprocess=args.preprocess, timeout_s=args.timeout, ready_timeout_s=args.ready_timeout, retries=args.retries,
        admin_key=args.admin_key, manifest=args.manifest, headers=dict(args.header), tls=tls_from_args(args),
        json=args.json,
    )
    return classify_files(options, reporter)


def classify_files(options: ClassifyOptions, reporter: Reporter, *,
                   out: Callable[[str], None] | None = None, err: Callable[[str], None] | None = None) -> int:
    """Classify the files behind ``options.paths``; print results and per-file errors; raise
    ``IncompleteRunError`` when some files failed."""
    # the client stack (tritonclient) only when the command runs
    from .classifier import ImageClassifier

    options.check()
    out = out or (lambda line: print(line, flush=True))
    err = err or (lambda line: print(line, file=sys.stderr, flush=True))
    files = expand_paths(options.paths)
    if not files:
        raise UsageError(f"no image files found in {' '.join(options.paths)}", hint="check the PATH arguments")
    url = options.url or f"127.0.0.1:{DEFAULT_PORTS[options.protocol]}"
    transform = _manifest_transform(options)
    failures = 0
    secure = " with TLS" if options.tls else ""
    with reporter.step(f"Connecting to '{options.model}' at {url} ({options.protocol}{secure})"):
        client = ImageClassifier(url, protocol=options.protocol, model=options.model,
                                 preprocess=options.preprocess, concurrency=options.concurrency,
                                 shared_memory=options.shared_memory, timeout=options.timeout_s,
                                 ready_timeout=options.ready_timeout_s, retries=options.retries,
                                 headers=options.headers, admin_key=options.admin_key, transform=transform,
                                 tls=options.tls)
    bar_context = reporter.bar(len(files), "Classifying") if len(files) >= PROGRESS_THRESHOLD else _no_bar()
    with client, bar_context as bar:
        for outcome in client.iter_outcomes(files, options.top_k, options.batch_size):
            if outcome.error is not None:
                failures += 1
                err(f"triton-deploy classify: {outcome.source}: {outcome.error.reason}")
            if options.json:
                out(json.dumps(outcome.to_dict()))
            elif outcome.prediction is not None:
                out(_line(outcome))
            bar.advance(1, status=f"{failures} failed" if failures else "")
    if failures:
        raise IncompleteRunError(f"{failures} of {len(files)} images could not be classified (listed above)",
                                 hint="fix or remove those files")
    return 0


def _manifest_transform(options: ClassifyOptions):
    """The export's preprocessing for ``--preprocess client``, read from ``--manifest`` (file or export directory)."""
    if options.manifest is None:
        return None
    path = Path(options.manifest)
    return Manifest.read(path.parent if path.name == MANIFEST_FILE else path).preprocessing


def _line(outcome: Outcome) -> str:
    assert outcome.prediction is not None
    ranks = "  ".join(f"{r.label} ({r.score:.4f})" for r in outcome.prediction.ranks)
    return f"{outcome.source}\t{ranks}"


class _no_bar:
    def __enter__(self) -> _no_bar:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def advance(self, amount: int = 1, status: str | None = None) -> None:
        return None


# ---- evaluate ---------------------------------------------------------------------------------------------------


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="accuracy of a served classifier on labelled images (A/B with --compare, gate with "
                         "--min-accuracy)",
        description="Classify DATA_DIR/<label>/* through the served model and write report.md, report.json, "
                    f"confusion.png and errors.png to --output. Exit codes: 0 done (gate passed), "
                    f"{AccuracyGateError.exit_code} accuracy below --min-accuracy (report written), "
                    f"{DatasetError.exit_code} unusable DATA_DIR, 30-36 server/model errors.")
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="one sub-folder per label, named after the label")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="DIR", help="report directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing --output directory")
    _add_connection_flags(p, protocol="grpc")
    p.add_argument("--compare", metavar="MODEL", help="a second ensemble to compare on the same images (A/B), e.g. "
                                                      "digits_int8_static")
    p.add_argument("--model-version", default="", metavar="N",
                   help="evaluate classifier version N of --model (as 'optimize --publish-as versions' publishes "
                        "them); preprocessing then runs here and needs --admin-key")
    p.add_argument("--compare-version", default="", metavar="N",
                   help="compare with classifier version N (of --compare, or of --model)")
    p.add_argument("--min-accuracy", type=float, metavar="X",
                   help=f"fail with exit code {AccuracyGateError.exit_code} when --model's accuracy is below X (0-1)")
    add_common_flags(p, json_help="print report.json on stdout")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace, reporter: Reporter) -> int:
    # the client stack (tritonclient) and matplotlib only when the command runs
    from .evaluate import EvaluateOptions, evaluate
    from .report import summary, to_dict

    options = EvaluateOptions(
        data_dir=args.data_dir, output=args.output, url=args.url, protocol=args.protocol, model=args.model,
        compare=args.compare, model_version=args.model_version, compare_version=args.compare_version,
        min_accuracy=args.min_accuracy, batch_size=args.batch_size,
        concurrency=args.concurrency, timeout_s=args.timeout, ready_timeout_s=args.ready_timeout,
        retries=args.retries, admin_key=args.admin_key, headers=dict(args.header), tls=tls_from_args(args),
        force=args.force)
    try:
        evaluation = evaluate(options, reporter)
    except AccuracyGateError as exc:
        _print_evaluation(exc.evaluation, args, reporter, summary, to_dict)
        raise
    _print_evaluation(evaluation, args, reporter, summary, to_dict)
    return 0


def _print_evaluation(evaluation, args: argparse.Namespace, reporter: Reporter, summary, to_dict) -> None:
    if args.json:
        print(json.dumps(to_dict(evaluation), indent=2))
    elif not args.quiet:
        reporter.info(summary(evaluation))
