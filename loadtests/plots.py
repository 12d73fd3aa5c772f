"""PNG plots of a load test, drawn with matplotlib's non-interactive Agg backend from Locust's CSV history."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType


PERCENTILES = ("50%", "95%", "99%")


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend. Imported on first plot, not with this module: matplotlib takes about a
    second to import, and the CLI imports the load-test modules to build its parser."""
    # matplotlib (about a second to import): only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display here
    # matplotlib (about a second to import): only when a plot is drawn
    import matplotlib.pyplot as plt

    return plt


def read_history(path: Path, window_s: int = 1) -> list[dict]:
    """Rows of ``*_stats_history.csv`` for all requests together ("Aggregated"), seconds from the start in ``t``.

    ``rps`` counts answered requests only, ``fps`` the failed ones. Both are computed from the cumulative counts
    over the last ``window_s`` seconds, not taken from Locust's own columns: those average over a window lagging
    2-12 s behind, which draws a steady load as a slow ramp and hides a short outage. With workers (``--processes``) counts arrive every few seconds, so use a
    window of that length."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            rows.append(row)
    if not rows:
        return []
    start = int(rows[0]["Timestamp"])
    history: list[dict[str, Any]] = [{"t": int(r["Timestamp"]) - start, "users": _number(r["User Count"]),
                "total": _number(r["Total Request Count"]) or 0.0, "failed": _number(r["Total Failure Count"]) or 0.0,
                # 0 before the first response is "no data", not a 0 ms latency
                **{p: (_number(r[p]) or None) for p in PERCENTILES}} for r in rows]
    for i, row in enumerate(history):
        earlier = next((h for h in reversed(history[:i]) if row["t"] - h["t"] >= window_s), None)
        if earlier is None:
            row["rps"] = row["fps"] = 0.0 if i == 0 else None
            continue
        seconds = row["t"] - earlier["t"]
        row["fps"] = (row["failed"] - earlier["failed"]) / seconds
        row["rps"] = (row["total"] - earlier["total"]) / seconds - row["fps"]  # answered only: a failure is no throughput
    return history


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # Locust writes N/A before the first response


def plot_timeline(history: list[dict], directory: Path, title: str) -> list[Path]:
    """``throughput.png`` (requests/s and users over time) and ``latency.png`` (p50/p95/p99 over time)."""
    plt = _pyplot()
    t = [r["t"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [r["rps"] for r in history], label="answered requests/s", color="tab:blue")
    ax.plot(t, [r["fps"] for r in history], label="failures/s", color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second (from Locust's counts)")
    users = ax.twinx()
    users.step(t, [r["users"] for r in history], where="post", color="tab:gray", linestyle="--", label="users")
    users.set_ylabel("users")
    lines = ax.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    ax.set_title(f"Throughput: {title}")
    ax.grid(alpha=0.3)
    throughput = directory / "throughput.png"
    fig.tight_layout()
    fig.savefig(throughput, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for p in PERCENTILES:
        ax.plot(t, [r[p] for r in history], label=f"p{p.rstrip('%')}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("response time (ms), last 3 s")  # the locustfile's percentile window
    ax.set_title(f"Latency: {title}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    latency = directory / "latency.png"
    fig.tight_layout()
    fig.savefig(latency, dpi=100)
    plt.close(fig)
    return [throughput, latency]


def plot_sweep(runs: list[dict], path: Path, title: str) -> Path:
    """Throughput and p50/p95/p99 against the user count, one point per sweep level."""
    plt = _pyplot()
    users = [r["users"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(users, [r["requests_per_s"] for r in runs], marker="o", label="answered requests/s")
    left.plot(users, [r["images_per_s"] for r in runs], marker="s", linestyle="--", label="images/s")
    left.set_xlabel("users")
    left.set_ylabel("per second")
    left.set_title("Throughput")
    left.legend()
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        right.plot(users, [r[key] for r in runs], marker="o", label=key.removesuffix("_ms"))
    right.set_xlabel("users")
    right.set_ylabel("response time (ms)")
    right.set_title("Latency")
    right.legend()
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(u) for u in users])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bench(report: dict, path: Path) -> Path:
    """``bench.png``: per model, images/s against concurrency for each server configuration, with the in-process
    baseline's best and the target's share of it as horizontal lines, so the efficiency gap is seen at a glance."""
    plt = _pyplot()
    models = list(report["models"].items())
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 5.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], models, strict=True):
        for label, config in r["configs"].items():
            levels = sorted(config["levels"].values(), key=lambda level: level["concurrency"])
            ax.plot([level["concurrency"] for level in levels], [level["images_per_s"] for level in levels],
                    marker="o", label=f"Triton, {label}")
        e = r["efficiency"]
        concurrency = e["triton_concurrency"]
        if e["triton_images_per_request"] > 1:
            ax.plot([concurrency], [e["triton_images_per_s"]], marker="*", markersize=12, linestyle="none",
                    color="black", label=f"Triton, {e['triton_images_per_request']} images per request")
        ax.axhline(e["in_process_images_per_s"], color="tab:green", linestyle="--",
                   label=f"in-process best ({e['in_process_arrangement']})")
        if r.get("target"):
            ax.axhline(r["target"] * e["in_process_images_per_s"], color="tab:red", linestyle=":",
                       label=f"target: {r['target']:g} x in-process")
        concurrencies = sorted(int(c) for c in next(iter(r["configs"].values()))["levels"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent gRPC requests (1 image each)")
        ax.set_ylabel("images/s")
        ax.set_title(f"{name}: efficiency {e['ratio']} (single-image {e['single_image_ratio']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)  # below: never over data
    fig.suptitle(f"Serving benchmark, {report['machine']['cores']} cores ({report['started']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
