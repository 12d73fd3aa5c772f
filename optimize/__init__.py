"""Cheaper variants of an export (FP16, INT8, distilled, ...), measured, gated and reported; TensorRT readiness.

``options`` and ``run`` hold ``OptimizeOptions`` and the ``optimize`` orchestrator; ``variants`` the registry of
variant builders; ``quantize`` and ``distill`` the rewrites and the student; ``evaluate`` accuracy and the gate;
``timing`` the benchmark; ``report`` report.md/json; ``tensorrt`` the TensorRT check; ``cli`` the subcommands.
"""
