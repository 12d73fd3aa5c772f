"""Model Analyzer's best configuration of an ensemble as a servable repository, for a side-by-side comparison.

Reads the checkpoint `model-analyzer profile` left (every measured run config: the ensemble's variant, its steps'
variants, throughput and p99), picks the highest throughput whose p99 is within the budget, and writes a copy of the
original repository with each step's config.pbtxt replaced by its variant's (the variants keep the models' names).
Prints every measured configuration, best first.

Usage: python scripts/model_analyzer/best_repository.py MA_OUTPUT REPOSITORY ENSEMBLE --p99-ms 100 --output DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def measured(checkpoint: Path, ensemble: str) -> list[dict]:
    results = json.loads(checkpoint.read_text())["ResultManager.results"]["_results"][ensemble]
    rows = []
    for variant, (_, measurements) in results.items():
        for key, measurement in measurements.items():
            metrics = dict(measurement["_model_config_measurements"][0]["_non_gpu_data"])
            steps = key.split()[-1].split(",")  # the composing variants, as Model Analyzer names the run
            rows.append({"ensemble_variant": variant, "steps": steps,
                         "images_per_s": metrics["perf_throughput"]["_value"],
                         "p99_ms": metrics["perf_latency_p99"]["_value"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ma_output", type=Path, help="the OUTPUT_DIR given to run.sh")
    parser.add_argument("repository", type=Path, help="the repository Model Analyzer profiled")
    parser.add_argument("ensemble")
    parser.add_argument("--p99-ms", type=float, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    rows = measured(args.ma_output / "checkpoints" / "0.ckpt", args.ensemble)
    rows.sort(key=lambda r: (r["p99_ms"] > args.p99_ms, -r["images_per_s"] if r["p99_ms"] <= args.p99_ms
                             else r["p99_ms"]))
    for row in rows:
        print(f"{row['ensemble_variant']:22} {row['images_per_s']:8.1f} images/s  p99 {row['p99_ms']:7.2f} ms  "
              f"{','.join(row['steps'])}")
    best = rows[0]
    shutil.rmtree(args.output, ignore_errors=True)
    shutil.copytree(args.repository, args.output, ignore=shutil.ignore_patterns("__pycache__"))
    variants = args.ma_output / "variants"
    for variant in [best["ensemble_variant"], *best["steps"]]:
        config = variants / variant / "config.pbtxt"
        model = variant.rsplit("_config_", 1)[0]
        shutil.copy2(config, args.output / model / "config.pbtxt")
    print(f"best: {best['ensemble_variant']} ({', '.join(best['steps'])}) -> {args.output}")


if __name__ == "__main__":
    main()
