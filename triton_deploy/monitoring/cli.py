"""The ``triton-deploy monitor`` subcommand: flags -> ``MonitorOptions`` -> ``run_monitor`` / ``snapshot_once``."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from triton_deploy.cliargs import add_common_flags
from triton_deploy.progress import Reporter

from .monitor import MonitorOptions, render, run_monitor, snapshot_once


def add_monitor(sub) -> None:
    d = MonitorOptions()
    p = sub.add_parser("monitor", help="live view of a Triton server: traffic, classes, confidence, drift, bad input",
                       description="Read Triton's metrics endpoint (no Prometheus needed) and show, every few "
                                   "seconds, request rate, failures, queue and compute time and batch size per model, "
                                   "and for each monitored ensemble the class distribution against the export's "
                                   "reference, the drift score, the low-confidence rate and decode failures by "
                                   "reason. Ctrl-C stops it.")
    p.add_argument("--metrics-url", default=d.metrics_url, metavar="HOST:PORT",
                   help=f"Triton's metrics endpoint (default {d.metrics_url}; a full URL works too)")
    p.add_argument("--interval", type=float, default=d.interval_s, metavar="SECONDS",
                   help=f"refresh period, and the span rates are measured over (default {d.interval_s:g})")
    p.add_argument("--model", help="only this ensemble and its member models (default: all)")
    p.add_argument("--once", action="store_true", help="print one snapshot (rates over --interval) and exit")
    add_common_flags(p, json_help="with --once: print the snapshot as JSON")
    p.set_defaults(handler=_run_monitor)


def _run_monitor(args: argparse.Namespace, reporter: Reporter) -> int:
    options = MonitorOptions(metrics_url=args.metrics_url, interval_s=args.interval, once=args.once or args.json,
                             model=args.model)
    if not options.once:
        run_monitor(options)
        return 0
    snapshot = snapshot_once(options)
    if args.json:
        print(json.dumps(snapshot.to_dict(), indent=2))
    else:
        Console().print(render(snapshot))
    return 0
