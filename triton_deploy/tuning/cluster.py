"""The winner as a named model configuration, for a cluster: ``<step>/configs/<name>.pbtxt`` beside each changed
step's ``config.pbtxt``, selected by Triton's ``--model-config-name`` (the chart's ``server.modelConfigName``).

Why a named configuration and not one chart value per knob: the chart does not own the configs (they come with the
repository from a volume, an object store or an image) and Triton has no command-line override for a model's
instances, batching or backend parameters. A named file beside the default keeps both configurations in the
repository the platform team already ships, and rolling back is unsetting one value.

The cluster's classifier is Triton's onnxruntime backend, not the local python-backend one, so the winner is applied
to the cluster's own repository (``repo --classifier-backend onnxruntime`` writes it) knob by knob: instances,
dynamic batching and queue delay mean the same on every backend; ``intra_op_thread_count`` is a parameter of both
(a number; ``auto``, the python classifier's cores-per-instance resolved at load, is not carried over: the cluster's
repository keeps the number ``repo`` rendered for it); ``session_batch_size`` exists only in the python classifier.
What is not carried over is listed in the report.
"""

from __future__ import annotations

import os
from pathlib import Path

from .knobs import Candidate, Knob, show_value
from .space import APPLY, EnsembleConfigs, copy_config

CHART_VALUE = "server.modelConfigName"


def winner_for(target: EnsembleConfigs, winner: Candidate, knobs: list[Knob]) -> tuple[dict[str, str], list[str]]:
    """(step -> the text of its named config under ``winner``, settings that do not apply to ``target``), for every
    step of ``target`` the winner changes. ``target`` may be another repository of the same ensemble (the cluster's)."""
    configs = {name: copy_config(config) for name, config in target.members.items()}
    changed: set[str] = set()
    skipped: list[str] = []
    for knob in knobs:
        value = winner.value(knob)
        if value == knob.values[0]:
            continue
        config = configs.get(knob.model)
        if config is None or not _applies(config, knob.field, value):
            skipped.append(f"{knob.name}={show_value(value)}")
            continue
        APPLY[knob.field](config, value)
        changed.add(knob.model)
    return {name: target.text(name, configs[name]) for name in sorted(changed)}, skipped


def _applies(config, field: str, value) -> bool:
    if field == "session_batch_size":
        return "session_batch_size" in config.parameters
    if field == "intra_op_threads":  # "auto" is the python classifier's: cores / instances, resolved at load
        return value != "auto" or "session_batch_size" in config.parameters
    if field in ("dynamic_batching", "max_queue_delay_us"):
        return config.max_batch_size > 0
    return True


def write_named(repository: Path, texts: dict[str, str], name: str) -> list[Path]:
    """``<step>/configs/<name>.pbtxt`` for each step, each written whole and then renamed into place."""
    written = []
    for model, text in texts.items():
        path = repository / model / "configs" / f"{name}.pbtxt"
        path.parent.mkdir(exist_ok=True)
        staging = path.with_name(f".{name}.pbtxt.{os.getpid()}.tmp")
        staging.write_text(text, encoding="utf-8")
        staging.replace(path)
        written.append(path)
    return written


def values_text(name: str, settings: list[str]) -> str:
    """A Helm values file selecting the named configuration, with the settings it carries as comments."""
    lines = [f"# Written by `triton-deploy tune`: serve each model's configs/{name}.pbtxt (the tuned configuration).",
             "# helm upgrade RELEASE helm/triton-classifier --reuse-values -f THIS_FILE", "# Tuned settings:"]
    lines += [f"#   {setting}" for setting in settings] or ["#   (none: the starting configuration won)"]
    lines += ["server:", f"  modelConfigName: {name}"]
    return "\n".join(lines) + "\n"


def set_line(name: str) -> str:
    return f"--set {CHART_VALUE}={name}"
