"""The ``triton-deploy tune`` subcommand: flags -> ``TuneOptions`` -> ``tune``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from triton_deploy.cliargs import add_common_flags, int_list, word_list
from triton_deploy.progress import Reporter

from .knobs import FIELDS
from .options import TuneOptions, auto_window


def duration(text: str) -> float:
    """'600', '600s', '10m', '1h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 600, 90s, 10m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def add_tune(sub) -> None:
    d = TuneOptions(repository=Path("."), model="", p99_ms=1.0)
    p = sub.add_parser(
        "tune", help="find the fastest configuration of an ensemble under a p99 latency budget",
        description="Load candidate configurations of the ensemble's steps (instances, dynamic batching, queue "
                    "delay, ONNX Runtime threads, session batch size) into a real Triton with explicit model control, "
                    "measure each with the project's load driver, and keep the fastest whose p99 stays within the "
                    "budget at every concurrency. Coordinate descent with short screening windows and longer "
                    "side-by-side challenges; the winner and the start are then run alternately to state the gain.")
    p.add_argument("repository", type=Path, metavar="REPOSITORY", help="a model repository written by 'repo'")
    p.add_argument("--model", required=True, help="the ensemble clients call (e.g. digits)")
    p.add_argument("--p99-ms", type=float, required=True, metavar="MS", help="p99 latency budget at every concurrency")
    p.add_argument("--concurrency", type=int_list, default=d.concurrencies, metavar="N,N",
                   help=f"requests in flight to measure at (default {','.join(map(str, d.concurrencies))})")
    p.add_argument("--budget", type=duration, default=d.budget_s, metavar="TIME",
                   help="wall-clock budget for the whole run, e.g. 10m (default 10m)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--output", "-o", type=Path, help="write a new repository with the winning configuration")
    where.add_argument("--in-place", action="store_true",
                       help="rewrite REPOSITORY's configs, keeping each replaced one as config.pbtxt.before-tune-*")
    p.add_argument("--report-dir", type=Path, default=d.report_dir,
                   help=f"tune.md, tune.json and tune.png go here (default {d.report_dir})")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--image-dir", type=Path, help="images to send (default: rendered digits; any image works, the "
                                                  "preprocess step resizes it)")
    p.add_argument("--only", type=word_list, default=(), metavar="KNOB,KNOB",
                   help=f"search only these knobs ({', '.join(FIELDS)}; default: all)")
    p.add_argument("--window", type=float, metavar="SECONDS",
                   help="screening window per concurrency (default: the budget over 60 windows per concurrency, "
                        "2 to 5 s; challenges and confirmation "
                        "use 2x and 2.5x)")
    p.add_argument("--config-name", default=d.config_name, metavar="NAME",
                   help=f"the winner is also written as <step>/configs/NAME.pbtxt, which Triton's --model-config-name "
                        f"(the chart's server.modelConfigName) selects (default {d.config_name})")
    p.add_argument("--cluster-repository", type=Path, metavar="DIR",
                   help="also write the winner's named configs into this repository of the same ensemble, e.g. the "
                        "one 'repo --classifier-backend onnxruntime' wrote for the cluster; its config.pbtxt files "
                        "stay as they are")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help=f"alternating confirmation runs of start and winner (default {d.repeats})")
    add_common_flags(p)
    p.set_defaults(handler=_run_tune)


def _run_tune(args: argparse.Namespace, reporter: Reporter) -> int:
    window = args.window or auto_window(args.budget, len(set(args.concurrency)))
    options = TuneOptions(repository=args.repository, model=args.model, p99_ms=args.p99_ms,
                          concurrencies=args.concurrency, budget_s=args.budget, output=args.output,
                          in_place=args.in_place, report_dir=args.report_dir, force=args.force,
                          image_dir=args.image_dir, only=args.only, screen_s=window, challenge_s=2 * window,
                          confirm_s=2.5 * window, repeats=args.repeats, config_name=args.config_name,
                          cluster_repository=args.cluster_repository)
    from .run import tune  # Triton's client libraries and matplotlib: off the start-up of every other command

    result = tune(options, reporter)
    if args.json:
        print(json.dumps(result.report, indent=2))
    return 0
