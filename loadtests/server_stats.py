"""Moved to ``triton_deploy.metrics`` (metrics scraping belongs to the core package: the monitor uses it too). This
name stays so that older imports, ``from triton_deploy.loadtests import server_stats``, keep working."""

from triton_deploy.metrics import (
    COLUMNS,
    METRICS,
    ModelTimes,
    counters_reset,
    delta,
    from_statistics,
    markdown_table,
    parse_metrics,
    parse_samples,
    read_metrics_text,
    scrape_metrics,
    server_report,
)

__all__ = ["COLUMNS", "METRICS", "ModelTimes", "counters_reset", "delta", "from_statistics", "markdown_table",
           "parse_metrics", "parse_samples", "read_metrics_text", "scrape_metrics", "server_report"]
