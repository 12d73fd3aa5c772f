"""The ``repo`` subcommand: flags -> ``RepositoryOptions`` -> ``generate_repository``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from triton_deploy.cliargs import add_common_flags, int_list
from triton_deploy.fsutil import check_writable
from triton_deploy.progress import Reporter

from .render import BACKENDS, RepositoryOptions


def add_repo(sub) -> None:
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
    monitoring = p.add_argument_group("prediction monitoring (custom metrics of the preprocess/postprocess steps)")
    monitoring.add_argument("--no-monitoring", dest="monitoring", action="store_false",
                            help="do not report prediction and input metrics")
    monitoring.add_argument("--low-confidence", type=float, default=d.low_confidence, metavar="P",
                            help="count predictions whose top-1 probability is below P as low-confidence "
                                 f"(default {d.low_confidence:g})")
    monitoring.add_argument("--drift-window", type=int, default=d.drift_window, metavar="N",
                            help=f"recent predictions the drift score compares with the export's reference "
                                 f"(default {d.drift_window})")
    monitoring.add_argument("--drift-min-predictions", type=int, default=d.drift_min_predictions, metavar="N",
                            help=f"no drift score until the window holds N predictions (default "
                                 f"{d.drift_min_predictions})")
    add_common_flags(p)
    p.set_defaults(handler=run_repo)


def run_repo(args: argparse.Namespace, reporter: Reporter) -> int:
    # the writer checks configs with tritonclient's protobuf schema: only when it writes
    from .writer import generate_repository

    options = RepositoryOptions(
        output=args.output, classifier_backend=args.classifier_backend, prefix=args.prefix,
        max_batch_size=args.max_batch_size, top_k=args.top_k, dynamic_batching=args.dynamic_batching,
        preferred_batch_sizes=args.preferred_batch_sizes, max_queue_delay_us=args.max_queue_delay_us,
        step_queue_delay_us=args.step_queue_delay_us,
        preprocess_instances=args.preprocess_instances, classifier_instances=args.classifier_instances,
        postprocess_instances=args.postprocess_instances, instance_kind=args.instance_kind,
        version_policy=args.version_policy, keep_versions=args.keep_versions,
        intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads,
        session_batch_size=args.session_batch_size, monitoring=args.monitoring, low_confidence=args.low_confidence,
        drift_window=args.drift_window, drift_min_predictions=args.drift_min_predictions,
    )
    check_writable(args.output, flag="--output")  # before the step's first line: a refusal is the only line
    with reporter.step(f"Generating the model repository in {args.output}"):
        result = generate_repository(args.exports, options)
    for note in result.notes:  # also with --json/--quiet: the user asked for something else
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        versions = ", ".join(f"{name} (classifier version {v})" for name, v in result.ensembles.items())
        reporter.info(f"Wrote {result.output}: {len(result.models)} models; ensembles: {versions}")
    return 0
