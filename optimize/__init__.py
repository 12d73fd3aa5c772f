"""Cheaper variants of an export (FP16, INT8, pruned, distilled, LiteRT, ...), measured, gated and reported;
TensorRT readiness.

The modules import in one direction: ``base`` (shared types) <- ``quantize``, ``distill``, ``prune`` (the rewrites,
the student, the structured pruner) and ``evaluate`` (images, accuracy, agreement, the gate, the recommendation) <-
``variants`` (the registry of builders, each with its own rules) <- ``options`` and ``run`` (the ``optimize``
orchestrator); ``timing`` the benchmark, ``report`` and ``plot`` report.md/json/png, ``tensorrt`` the TensorRT check,
``cli`` the subcommands. Images come from the export's dataset record through ``triton_deploy.export.datasets``: no
module here knows which model or dataset it optimises.
"""
