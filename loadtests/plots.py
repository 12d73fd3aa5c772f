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


def read_history(path: Path, window_s: int = 1, last_request: float | None = None) -> list[dict]:
    """Rows of ``*_stats_history.csv`` for all requests together ("Aggregated"), seconds from the start in ``t``.

    ``rps`` counts answered requests only, ``fps`` the failed ones. Both are computed from the cumulative counts
    over the last ``window_s`` seconds, not taken from Locust's own columns: those average over a window lagging
    2-12 s behind, which draws a steady load as a slow ramp and hides a short outage. With workers
    (``--processes``) counts arrive every few seconds, so use a window of that length.

    ``last_request`` (epoch seconds, from the locustfile's ``_window.json``) ends the time line at the last row
    written before it: the interval holding the end was under load for only part of its length, and rows after it
    are written while Locust shuts down. Divided by the whole interval, that part drew a drop that never happened;
    the row times are known to a fraction of a second only, too coarse to rate a fraction of an interval."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            rows.append(row)
    if not rows:
        return []
    times = tick_times([int(r["Timestamp"]) for r in rows])
    history: list[dict[str, Any]] = [{"t": t - times[0], "users": _number(r["User Count"]),
                "total": _number(r["Total Request Count"]) or 0.0, "failed": _number(r["Total Failure Count"]) or 0.0,
                # 0 before the first response is "no data", not a 0 ms latency
                **{p: (_number(r[p]) or None) for p in PERCENTILES}} for t, r in zip(times, rows, strict=True)]
    if last_request is not None:
        end = last_request - times[0]
        history = [h for h in history if h["t"] <= end] or history[:1]
    for i, row in enumerate(history):
        earlier = next((h for h in reversed(history[:i]) if row["t"] - h["t"] >= window_s - 1e-6), None)
        if earlier is None:
            row["rps"] = row["fps"] = 0.0 if i == 0 else None
            continue
        seconds = row["t"] - earlier["t"]
        row["fps"] = (row["failed"] - earlier["failed"]) / seconds
        row["rps"] = (row["total"] - earlier["total"]) / seconds - row["fps"]  # answered only: a failure is no throughput
    return history


def tick_times(stamps: list[int], neighbours: int = 15) -> list[float]:
    """When each history row was written. Locust writes one every ``CSV_STATS_INTERVAL_SEC`` (a little more under
    load) but stamps it with the time cut to whole seconds, so two neighbours can look 1 or 2 s apart when they were
    1.02 s apart: divided by those, a steady load draws spikes and drops. Each row's time is taken from the even
    cadence of the rows around it (the run's mean spacing, anchored on the ``neighbours`` rows either side, so a
    slow drift of the cadence is followed), kept within the second its own stamp allows: a real stall still shows."""
    if len(stamps) < 2:
        return [float(t) for t in stamps]
    spacing = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    times = []
    for i, stamp in enumerate(stamps):
        near = range(max(0, i - neighbours), min(len(stamps), i + neighbours + 1))
        estimate = sum(stamps[j] + 0.5 + (i - j) * spacing for j in near) / len(near)
        times.append(min(max(estimate, stamp), stamp + 0.999))
    return times


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # Locust writes N/A before the first response


def plot_timeline(history: list[dict], directory: Path, title: str) -> list[Path]:
    """``throughput.png`` (requests/s and users over time) and ``latency.png`` (p50/p95/p99 over time). Legends
    sit below the axes, never over the lines; both y axes start at 0 so a dip is drawn at its true size."""
    plt = _pyplot()
    t = [r["t"] for r in history]
    fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
    # Steps, not lines: each rate is the mean over the interval that ends at its row, and a line between two rows
    # would draw an outage's edge as a ramp over the whole interval.
    ax.step(t, [r["rps"] for r in history], where="pre", label="answered requests/s", color="tab:blue")
    ax.step(t, [r["fps"] for r in history], where="pre", label="failures/s", color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second (from Locust's counts)")
    ax.set_ylim(bottom=0)
    users = ax.twinx()
    users.step(t, [r["users"] for r in history], where="post", color="tab:gray", linestyle="--", label="users")
    users.set_ylabel("users")
    users.set_ylim(bottom=0, top=max([r["users"] or 0 for r in history] + [1]) * 1.1)
    users.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    lines = ax.get_legend_handles_labels()[0] + users.get_legend_handles_labels()[0]
    fig.legend(lines, [str(line.get_label()) for line in lines], loc="outside lower center", ncol=3)
    ax.set_title(f"Throughput: {title}")
    ax.grid(alpha=0.3)
    throughput = directory / "throughput.png"
    fig.savefig(throughput, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
    for p in PERCENTILES:
        ax.plot(t, [r[p] for r in history], label=f"p{p.rstrip('%')}", marker=_marker(t))
    ax.set_xlabel("seconds")
    ax.set_ylabel("response time (ms) over the last 3 s")  # the locustfile's percentile window
    ax.set_ylim(bottom=0)
    ax.set_title(f"Latency: {title}")
    fig.legend(loc="outside lower center", ncol=3)
    ax.grid(alpha=0.3)
    latency = directory / "latency.png"
    fig.savefig(latency, dpi=100)
    plt.close(fig)
    return [throughput, latency]


def _marker(t: list[float]) -> str | None:
    return "o" if len(t) <= 30 else None  # a few points: show where the measurements are


def plot_sweep(runs: list[dict], path: Path, title: str) -> Path:
    """Throughput and p50/p95/p99 against the user count, one point per sweep level. Images/s gets its own line only
    when requests carry several images (at batch 1 it would hide the requests line exactly); latency goes to a log
    scale when the percentiles span more than a factor of 20, so p50 is not flattened against the axis."""
    plt = _pyplot()
    users = [r["users"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    same = all(r["images_per_s"] == r["requests_per_s"] for r in runs)
    left.plot(users, [r["requests_per_s"] for r in runs], marker="o",
              label="answered requests/s" + (" (= images/s)" if same else ""))
    if not same:
        left.plot(users, [r["images_per_s"] for r in runs], marker="s", linestyle="--", label="images/s")
    left.set_xlabel("users")
    left.set_ylabel("per second")
    left.set_ylim(bottom=0)
    left.set_title("Throughput")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=9)
    latencies = [r[key] for r in runs for key in ("p50_ms", "p95_ms", "p99_ms") if r[key]]
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        right.plot(users, [r[key] for r in runs], marker="o", label=key.removesuffix("_ms"))
    if latencies and max(latencies) > 20 * min(latencies):
        right.set_yscale("log")
    else:
        right.set_ylim(bottom=0)
    right.set_xlabel("users")
    right.set_ylabel("response time (ms)")
    right.set_title("Latency")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=9)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(users, [str(u) for u in users])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
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
        # reference lines in black and grey: the configurations take the colour cycle (green was one of them)
        ax.axhline(e["in_process_images_per_s"], color="black", linestyle="--",
                   label=f"in-process best ({e['in_process_arrangement']})")
        if r.get("target"):
            ax.axhline(r["target"] * e["in_process_images_per_s"], color="dimgrey", linestyle=":",
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
