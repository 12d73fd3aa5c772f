"""``triton-deploy loadtest`` and ``triton-deploy bench``: flags -> a frozen options dataclass -> one core function.

Registered in ``triton_deploy/cli.py`` through ``add_loadtest(sub)`` and ``add_bench(sub)``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triton_deploy.cliargs import add_common_flags, int_list, word_list
from triton_deploy.errors import UsageError
from triton_deploy.loadtests.bench import BUILT_IN, BenchOptions, run_bench
from triton_deploy.loadtests.runner import LoadTestOptions, parse_duration, results_line, run_loadtest, summary_table
from triton_deploy.loadtests.slo import DEFAULT_MAX_ERROR_RATE, SLO, SLOViolation
from triton_deploy.progress import Reporter

# ---- loadtest -------------------------------------------------------------------------------------------------


def add_loadtest(sub) -> None:
    d = LoadTestOptions()
    p = sub.add_parser("loadtest", help="headless Locust load test with SLO gates, reports and plots",
                       description="Run Locust (Triton's own client library, HTTP or gRPC users) against a server, "
                                   "scrape Triton's metrics before and after, and write CSV, HTML, JSON and PNG "
                                   "results into a timestamped folder. Exits 11 when an SLO is broken, "
                                   f"including by default when more than {DEFAULT_MAX_ERROR_RATE:.0%} of requests "
                                   "failed; throughput counts only answered requests.")
    target = p.add_argument_group("target (one of)")
    target.add_argument("--url", metavar="HOST:PORT", help="a running server (the port of --protocol)")
    target.add_argument("--repository", type=Path, metavar="DIR", help="start a local server on this repository")
    p.add_argument("--metrics-url", help="Triton's Prometheus endpoint (default: http://HOST:8002/metrics)")
    p.add_argument("--protocol", choices=["http", "grpc"], default=d.protocol, help="default http")
    p.add_argument("--model", default=d.model, help=f"ensemble to call (default {d.model})")
    p.add_argument("--users", "-u", type=int, default=d.users, help=f"concurrent users (default {d.users})")
    p.add_argument("--spawn-rate", type=float, help="users started per second (default: all within a second)")
    p.add_argument("--duration", "-t", default="30s", help="run time per level, e.g. 30s, 2m (default 30s)")
    p.add_argument("--sweep", type=int_list, default=(), metavar="N,N,...",
                   help="one run per user count, e.g. 1,4,16, plotted against users (replaces --users)")
    p.add_argument("--processes", type=int, default=d.processes,
                   help="Locust processes (master + workers when > 1) so the generator is not the bottleneck")
    p.add_argument("--shape", choices=["step", "spike"],
                   help="drive users by a load shape: step (4 steps) or spike (base, spike, base: thirds), peaking at "
                        "--users over --duration; --shape-arg values replace those")
    p.add_argument("--shape-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a shape option (repeatable): step-users, step-seconds, steps; spike-base-users, spike-users, "
                        "spike-at, spike-seconds, spike-total-seconds")
    payload = p.add_argument_group("payload")
    payload.add_argument("--batch-size", type=int, default=d.batch_size, help="images per request (default 1)")
    payload.add_argument("--top-k", type=int, default=d.top_k, help="class ids each image must get (default 1)")
    payload.add_argument("--image-dir", type=Path, help="send these images (default: rendered digits)")
    payload.add_argument("--image-sizes", type=int_list, default=d.image_sizes, metavar="N,N",
                         help="digit image sizes (default 64,128)")
    payload.add_argument("--image-formats", type=word_list, default=d.image_formats, metavar="FMT,FMT",
                         help="digit image formats (default PNG,JPEG)")
    payload.add_argument("--pool-size", type=int, default=d.pool_size, help="digit images in the pool (default 64)")
    slo = p.add_argument_group("SLO gate")
    slo.add_argument("--slo-p95-ms", type=float, help="max p95 response time (ms)")
    slo.add_argument("--slo-p99-ms", type=float, help="max p99 response time (ms)")
    slo.add_argument("--slo-error-rate", type=float, default=DEFAULT_MAX_ERROR_RATE,
                     help=f"max failed fraction (default {DEFAULT_MAX_ERROR_RATE:g}: a run with more failed requests "
                          "fails even without other SLO flags; 1 only reports errors)")
    p.add_argument("--output", "-o", type=Path, default=d.output, help=f"results folder (default {d.output})")
    add_common_flags(p)
    p.set_defaults(handler=run_loadtest_command)


def run_loadtest_command(args: argparse.Namespace, reporter: Reporter) -> int:
    shape_args = {}
    for item in args.shape_arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--shape-arg {item!r} is not KEY=VALUE", hint="e.g. --shape-arg step-users=4")
        shape_args[key.strip().lstrip("-")] = value.strip()
    options = LoadTestOptions(
        output=args.output, url=args.url, repository=args.repository, protocol=args.protocol, model=args.model,
        users=args.users, spawn_rate=args.spawn_rate, duration_s=parse_duration(args.duration), sweep=args.sweep,
        processes=args.processes, batch_size=args.batch_size, top_k=args.top_k, image_dir=args.image_dir,
        image_sizes=args.image_sizes, image_formats=args.image_formats, pool_size=args.pool_size, shape=args.shape,
        shape_args=shape_args, slo=SLO(args.slo_p95_ms, args.slo_p99_ms, args.slo_error_rate),
        metrics_url=args.metrics_url,
    )
    try:
        result = run_loadtest(options, reporter)
        summary, directory = result.summary, result.directory
    except SLOViolation as exc:
        _print(args, reporter, exc.result.summary, exc.result.directory)
        raise
    _print(args, reporter, summary, directory)
    return 0


def _print(args, reporter: Reporter, summary: dict, directory: Path) -> None:
    if args.json:
        print(json.dumps(summary | {"directory": str(directory)}, indent=2))
    else:
        reporter.info(summary_table(summary))
        reporter.info(results_line(summary, directory))


# ---- bench ----------------------------------------------------------------------------------------------------


def add_bench(sub) -> None:
    d = BenchOptions()
    p = sub.add_parser("bench", help="serving-efficiency benchmark: Triton vs the same pipeline in-process",
                       description="Measure, in one run: Triton ensemble throughput vs the in-process pipeline, "
                                   "dynamic batching on/off and 1 vs 2 classifier instances, HTTP vs gRPC latency, "
                                   "and where each request's time goes. Writes report.md, report.json and bench.png.")
    p.add_argument("--models", type=word_list, default=d.models, metavar="NAME,NAME",
                   help=f"built-in models to export and bench (default {','.join(BUILT_IN)})")
    p.add_argument("--exports", type=Path, nargs="+", default=(), metavar="EXPORT_DIR",
                   help="bench these export directories instead of --models")
    p.add_argument("--duration", default=f"{d.duration_s:g}s", help="seconds per measurement (default 8s)")
    p.add_argument("--concurrency", type=int_list, default=d.concurrencies, metavar="N,N",
                   help="concurrency levels (default 1,4,16)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="input size of keras.applications models")
    p.add_argument("--quick", action="store_true", help="a tiny run (1 s measurements, fewer configurations)")
    p.add_argument("--no-monitoring", dest="monitoring", action="store_false",
                   help="serve repositories without the prediction metrics (to measure what monitoring costs)")
    p.add_argument("--work-dir", type=Path, help="exports and repositories, reused between runs "
                                                 "(default OUTPUT/work)")
    p.add_argument("--output", "-o", type=Path, default=d.output, help=f"report folder (default {d.output})")
    add_common_flags(p)
    p.set_defaults(handler=run_bench_command)


def run_bench_command(args: argparse.Namespace, reporter: Reporter) -> int:
    options = BenchOptions(output=args.output, models=args.models, exports=tuple(args.exports),
                           work_dir=args.work_dir, duration_s=parse_duration(args.duration),
                           concurrencies=args.concurrency, image_size=args.image_size, quick=args.quick,
                           monitoring=args.monitoring)
    result = run_bench(options, reporter)
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        reporter.info(result.markdown)
        reporter.info(f"Wrote {result.directory / 'report.md'}, report.json and bench.png")
    return 0
