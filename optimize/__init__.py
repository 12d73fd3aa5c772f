"""Cheaper variants of an export (FP16, INT8, pruned, distilled, LiteRT, ...), measured, gated and reported;
TensorRT readiness.

``options`` and ``run`` hold ``OptimizeOptions`` and the ``optimize`` orchestrator; ``variants`` the registry of
variant builders; ``quantize``, ``prune`` and ``distill`` the rewrites, the structured pruner and the student;
``evaluate`` accuracy and the gate; ``timing`` the benchmark; ``report`` report.md/json/png; ``tensorrt`` the TensorRT
check; ``cli`` the subcommands.
"""
