"""Measure model repositories side by side with perf_analyzer: each round starts Triton on every repository in turn
(same order every round, so the machine's drift hits all of them alike), warms it up, and runs perf_analyzer at one
concurrency over gRPC. Prints one line per run and a summary of medians and ranges, and writes them as JSON.

Usage:
  python scripts/model_analyzer/compare.py --model digits --concurrency 8 --rounds 5 \\
      default=build/tune-start tune=build/tuned ma=build/ma-best [--json build/compare.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from triton_deploy.server import ServerOptions, TritonServer, free_ports

HERE = Path(__file__).resolve().parent


def perf_analyzer(url: str, model: str, concurrency: int, input_data: Path, interval_ms: int) -> dict:
    """One perf_analyzer run: three windows of ``interval_ms``; throughput and p99 are their averages."""
    with tempfile.TemporaryDirectory() as temp:
        report = Path(temp) / "pa.csv"
        subprocess.run([str(HERE / "perf_analyzer.sh"), "-m", model, "-u", url, "-i", "grpc",
                        f"--concurrency-range={concurrency}", f"--measurement-interval={interval_ms}",
                        "--max-trials=3", "--stability-percentage=999", "--percentile=99",
                        f"--input-data={input_data}", "-f", str(report)],
                       check=True, capture_output=True, text=True, timeout=600)
        row = next(csv.DictReader(report.open()))
    return {"images_per_s": float(row["Inferences/Second"]), "p99_ms": float(row["p99 latency"]) / 1000.0,
            "p50_ms": float(row["p50 latency"]) / 1000.0}


def serve_and_measure(repository: Path, args: argparse.Namespace) -> dict:
    http, grpc, metrics = free_ports(3)
    options = ServerOptions(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            exit_timeout_s=5)
    with TritonServer(options):
        url = f"127.0.0.1:{grpc}"
        perf_analyzer(url, args.model, args.concurrency, args.input_data, 1000)  # warm-up, not counted
        result = perf_analyzer(url, args.model, args.concurrency, args.input_data, args.interval_ms)
    result["load_average"] = os.getloadavg()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repositories", nargs="+", metavar="LABEL=REPOSITORY")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--input-data", type=Path, default=Path("build/pa-input.json"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    named = [(label, Path(path)) for label, path in (item.split("=", 1) for item in args.repositories)]
    if not args.input_data.exists():
        subprocess.run([sys.executable, str(HERE / "input_data.py"), str(args.input_data)], check=True)
    runs: dict[str, list[dict]] = {label: [] for label, _ in named}
    for round_ in range(1, args.rounds + 1):
        for label, repository in named:
            result = serve_and_measure(repository, args)
            runs[label].append(result)
            print(f"round {round_} {label:10} {result['images_per_s']:8.1f} images/s  p99 {result['p99_ms']:6.2f} ms"
                  f"  p50 {result['p50_ms']:6.2f} ms  (load {result['load_average']:.2f})", flush=True)
    summary = {}
    for label, results in runs.items():
        figures = {key: [r[key] for r in results] for key in ("images_per_s", "p50_ms", "p99_ms")}
        summary[label] = {key: {"median": statistics.median(values), "min": min(values), "max": max(values)}
                          for key, values in figures.items()}
        ips, p50, p99 = figures["images_per_s"], figures["p50_ms"], figures["p99_ms"]
        print(f"{label:10} median {statistics.median(ips):8.1f} images/s ({min(ips):.1f}-{max(ips):.1f}), "
              f"p50 {statistics.median(p50):.2f} ms ({min(p50):.2f}-{max(p50):.2f}), "
              f"p99 {statistics.median(p99):.2f} ms ({min(p99):.2f}-{max(p99):.2f}) over {len(results)} rounds")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
