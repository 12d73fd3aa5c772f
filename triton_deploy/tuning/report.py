"""The tuning report: every measured candidate as a table, throughput against p99 per concurrency as a plot with
the winner marked, the side-by-side gain with its spread, and the ``repo`` flags that reproduce the winner."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .results import Measurement
from .search import SearchResult
from .space import Knob, repo_flags


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def _confirmation(runs: list[Measurement]) -> dict[int, dict]:
    if not runs:
        return {}
    return {point.concurrency: {
        "images_per_s": _spread([m.points[i].images_per_s for m in runs]),
        "p99_ms": _spread([m.points[i].p99_ms for m in runs]),
    } for i, point in enumerate(runs[0].points)}


def summarise(outcome: SearchResult, knobs: list[Knob], options, elapsed_s: float) -> dict:
    start, winner = _confirmation(outcome.confirm_start), _confirmation(outcome.confirm_winner)
    gain = {c: round(winner[c]["images_per_s"]["median"] / max(start[c]["images_per_s"]["median"], 1e-9), 3)
            for c in start if c in winner}
    flags, unmatched = repo_flags(outcome.winner, knobs)
    return {
        "model": options.model,
        "p99_budget_ms": options.p99_ms,
        "concurrencies": list(options.settings.concurrencies),
        "budget_s": options.budget_s,
        "elapsed_s": round(elapsed_s, 1),
        "stopped_by_budget": outcome.stopped_by_budget,
        "knobs": {k.name: [_jsonable(v) for v in k.values] for k in knobs},
        "winner": dict(outcome.winner.changes),
        "winner_label": outcome.winner.label,
        "lead_lost_in_confirmation": outcome.challenger.label if outcome.challenger else None,
        "confirmation": {"repeats": len(outcome.confirm_winner), "start": start, "winner": winner,
                         "throughput_gain": gain},
        "repo_flags": flags,
        "settings_without_repo_flag": unmatched,
        "candidates": [{
            "candidate": record.candidate.label, "stage": record.stage, "note": record.note,
            "window_s": record.measurement.window_s if record.measurement else None,
            "points": [vars(p) | {"images_per_s": round(p.images_per_s, 1), "p50_ms": round(p.p50_ms, 2),
                                  "p99_ms": round(p.p99_ms, 2)} for p in record.measurement.points]
            if record.measurement else [],
            "feasible": record.measurement.feasible(options.p99_ms) if record.measurement else False,
        } for record in outcome.records],
    }


def _jsonable(value):
    return value if isinstance(value, bool | int | str) else str(value)


def write(summary: dict, outcome: SearchResult, directory: Path, p99_ms: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tune.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (directory / "tune.md").write_text(markdown(summary), encoding="utf-8")
    plot(summary, directory / "tune.png")


def markdown(summary: dict) -> str:
    concurrencies = summary["concurrencies"]
    head = " | ".join(f"c={c} images/s | c={c} p99 ms" for c in concurrencies)
    lines = [f"# Tuning {summary['model']}: p99 <= {summary['p99_budget_ms']:g} ms", "",
             f"{len(summary['candidates'])} measurements in {summary['elapsed_s']:.0f} s "
             f"(budget {summary['budget_s']:.0f} s{', stopped by the budget' if summary['stopped_by_budget'] else ''}).",
             "", f"| # | stage | candidate | window s | {head} | within budget |",
             "|---|---|---|---|" + "---|---|" * len(concurrencies) + "---|"]
    for i, row in enumerate(summary["candidates"], 1):
        cells = " | ".join(f"{p['images_per_s']:,.0f} | {p['p99_ms']:.1f}" for p in row["points"]) \
            or " | ".join("-" for _ in range(2 * len(concurrencies)))
        window = f"{row['window_s']:g}" if row["window_s"] else "-"
        verdict = "yes" if row["feasible"] else ("not loaded: " + row["note"] if row["stage"] == "rejected" else "no")
        lines.append(f"| {i} | {row['stage']} | {row['candidate']} | {window} | {cells} | {verdict} |")
    lines += ["", *conclusion_lines(summary)]
    return "\n".join(lines) + "\n"


def conclusion_lines(summary: dict) -> list[str]:
    confirmation = summary["confirmation"]
    if not summary["winner"]:
        lines = ["No change kept: no candidate beat the starting configuration by more than the noise in side-by-side "
                 "runs" + (f" ({summary['lead_lost_in_confirmation']} led while searching, not in the confirmation)"
                           if summary["lead_lost_in_confirmation"] else "")]
        for c, s in summary["confirmation"]["start"].items():
            lines.append(f"  concurrency {c}: {s['images_per_s']['median']:,.0f} images/s (range "
                         f"{s['images_per_s']['min']:,.0f}-{s['images_per_s']['max']:,.0f}), p99 "
                         f"{s['p99_ms']['median']:.1f} ms (medians of {summary['confirmation']['repeats']} runs)")
        return lines
    lines = [f"Winner: {summary['winner_label']}"]
    for c, gain in confirmation["throughput_gain"].items():
        s, w = confirmation["start"][c], confirmation["winner"][c]
        lines.append(
            f"  concurrency {c}: {w['images_per_s']['median']:,.0f} images/s (range {w['images_per_s']['min']:,.0f}-"
            f"{w['images_per_s']['max']:,.0f}) against the start's {s['images_per_s']['median']:,.0f} "
            f"({s['images_per_s']['min']:,.0f}-{s['images_per_s']['max']:,.0f}): {gain:.2f}x; p99 "
            f"{w['p99_ms']['median']:.1f} ms against {s['p99_ms']['median']:.1f} ms "
            f"(medians of {confirmation['repeats']} alternating runs)")
    if summary["repo_flags"]:
        lines.append("Reproduce with: triton-deploy repo EXPORT_DIR " + " ".join(summary["repo_flags"]))
    if summary["settings_without_repo_flag"]:
        lines.append("No repo flag for: " + ", ".join(summary["settings_without_repo_flag"])
                     + " (keep the tuned config.pbtxt files)")
    return lines + cluster_lines(summary.get("cluster"))


def cluster_lines(written: dict | None) -> list[str]:
    """How a cluster serves the winner: the named configs written, and the chart value that selects them."""
    if not written or not written["written"]:
        return []
    name = written["config_name"]
    lines = [f"Named configuration {name!r} (configs/{name}.pbtxt) written for: "
             + ", ".join(sorted({Path(p).parent.parent.name for p in written["written"]}))]
    if written["cluster_repository"]:
        lines.append(f"  in the cluster's repository {written['cluster_repository']} too"
                     + (f"; not carried over (no such setting there): {', '.join(written['not_carried_over'])}"
                        if written["not_carried_over"] else ""))
    lines.append(f"In the cluster (chart helm/triton-classifier): {written['helm_set']}  "
                 f"(or -f {written['values_file']})")
    return lines


def plot(summary: dict, path: Path) -> Path:
    """Throughput against p99, one panel per concurrency: every measurement a dot, the budget a line, the winner's
    and the start's confirmation medians marked."""
    import matplotlib  # heavy: loaded only when a report is drawn

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # after the backend is chosen

    concurrencies = summary["concurrencies"]
    fig, axes = plt.subplots(1, len(concurrencies), figsize=(4.2 * len(concurrencies), 3.8), squeeze=False)
    for ax, c in zip(axes[0], concurrencies, strict=True):
        points = [p for row in summary["candidates"] for p in row["points"] if p["concurrency"] == c]
        ax.scatter([p["p99_ms"] for p in points], [p["images_per_s"] for p in points], s=16, color="0.6",
                   label="measured candidates")
        ax.axvline(summary["p99_budget_ms"], color="tab:red", linestyle="--", linewidth=1, label="p99 budget")
        for which, marker, colour in (("start", "s", "tab:blue"), ("winner", "*", "tab:green")):
            confirmed = summary["confirmation"][which].get(c)
            if confirmed:
                ax.scatter([confirmed["p99_ms"]["median"]], [confirmed["images_per_s"]["median"]], marker=marker,
                           s=160 if marker == "*" else 70, color=colour, edgecolor="black", zorder=3,
                           label=f"{which} (median of confirmation runs)")
        ax.set_title(f"concurrency {c}")
        ax.set_xlabel("p99 latency (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("images per second")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"tune {summary['model']}: {summary['winner_label']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
