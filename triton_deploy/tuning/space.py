"""What ``tune`` may change in an ensemble's repository, and how a candidate becomes ``config.pbtxt`` files.

The space is read from the repository itself (the ensemble's steps and their configs, parsed with Triton's own
``ModelConfig`` protobuf), so it works on any repository ``repo`` wrote, a user's own model included. Each knob is one
field of one step's config; a candidate is the starting configuration with some knobs set to other values.

``max_batch_size`` is deliberately not a knob: lowering it would change what clients may send (an ensemble's batch
cannot exceed any step's). Turning a step's dynamic batching off gives the same one-request-at-a-time behaviour
Model Analyzer reaches with ``max_batch_size: 1`` while batched requests keep working.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_deploy.errors import UsageError

from .knobs import FIELDS, Candidate, Knob, Value, show_value

# ---- reading a repository ----------------------------------------------------------------------------------------

def read_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (OSError, text_format.ParseError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="check REPOSITORY (a repository written by 'repo')") from None
    return config


@dataclass
class EnsembleConfigs:
    """The ensemble's member configs as found on disk, and the comment lines above each (kept when rewriting)."""

    repository: Path
    ensemble: str
    members: dict[str, model_config_pb2.ModelConfig] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, repository: Path, ensemble: str) -> EnsembleConfigs:
        path = repository / ensemble / "config.pbtxt"
        if not path.is_file():
            names = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
            raise UsageError(f"no model {ensemble!r} in {repository} (models: {', '.join(names) or 'none'})",
                             hint="check --model and REPOSITORY")
        config = read_config(path)
        if config.platform != "ensemble":
            raise UsageError(f"{ensemble!r} is not an ensemble (platform {config.platform or config.backend!r})",
                             hint="give the ensemble clients call as --model")
        found = cls(repository, ensemble)
        for step in config.ensemble_scheduling.step:
            member_path = repository / step.model_name / "config.pbtxt"
            found.members[step.model_name] = read_config(member_path)
            found.headers[step.model_name] = _comment_header(member_path)
        return found

    def knobs(self, cpus: int | None = None) -> list[Knob]:
        """The search space, most influential first (the classifier's knobs before the cheap steps')."""
        cpus = cpus or os.cpu_count() or 2
        instance_values = tuple(range(1, min(cpus, 3) + 2))  # up to one more process than cores
        ordered = sorted(self.members, key=lambda name: 0 if _is_classifier(self.members[name]) else 1)
        knobs: list[Knob] = []
        for name in ordered:
            config = self.members[name]
            knobs.append(Knob(name, "instances", _first(_instances(config), instance_values)))
            if config.max_batch_size > 0:
                batching = config.HasField("dynamic_batching")
                knobs.append(Knob(name, "dynamic_batching", (batching, not batching)))
            if _is_classifier(config):
                delay = config.dynamic_batching.max_queue_delay_microseconds
                knobs.append(Knob(name, "max_queue_delay_us", _first(delay, (0, 200, 1000))))
                parameters = config.parameters
                if "intra_op_thread_count" in parameters:
                    threads = parameters["intra_op_thread_count"].string_value
                    knobs.append(Knob(name, "intra_op_threads", _first(threads, ("auto", "1", str(cpus)))))
                if "session_batch_size" in parameters:
                    chunk = parameters["session_batch_size"].string_value
                    knobs.append(Knob(name, "session_batch_size", _first(chunk, ("0", "4", "8", "16"))))
        return knobs

    def render(self, candidate: Candidate, knobs: list[Knob]) -> dict[str, str]:
        """model name -> the text of its config.pbtxt under ``candidate``."""
        configs = {name: copy_config(config) for name, config in self.members.items()}
        for knob in knobs:
            APPLY[knob.field](configs[knob.model], candidate.value(knob))
        return {name: self.text(name, config) for name, config in configs.items()}

    def text(self, name: str, config: model_config_pb2.ModelConfig) -> str:
        """``config`` as the text of step ``name``'s config file, under the comment lines its file had."""
        return self.headers[name] + text_format.MessageToString(config)


def _first(current: Value, options: tuple[Value, ...]) -> tuple[Value, ...]:
    return (current, *[v for v in options if v != current])


def _is_classifier(config: model_config_pb2.ModelConfig) -> bool:
    """The step that runs the network: ONNX Runtime's threads are configured on it (python or onnxruntime)."""
    return "intra_op_thread_count" in config.parameters or config.backend == "onnxruntime"


def _instances(config: model_config_pb2.ModelConfig) -> int:
    return sum(group.count or 1 for group in config.instance_group) or 1


def _comment_header(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def copy_config(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    copy = model_config_pb2.ModelConfig()
    copy.CopyFrom(config)
    return copy


# ---- applying one knob's value to a config ------------------------------------------------------------------------

def _set_instances(config, count) -> None:
    kind = config.instance_group[0].kind if config.instance_group else model_config_pb2.ModelInstanceGroup.KIND_CPU
    del config.instance_group[:]
    config.instance_group.add(count=int(count), kind=kind)


def _set_dynamic_batching(config, on) -> None:
    if not on:
        config.ClearField("dynamic_batching")
    elif not config.HasField("dynamic_batching"):
        config.dynamic_batching.SetInParent()


def _set_queue_delay(config, delay) -> None:
    if config.HasField("dynamic_batching"):  # meaningless (and left out) while batching is off
        config.dynamic_batching.max_queue_delay_microseconds = int(delay)


def _parameter(key: str) -> Callable:
    def apply(config, value) -> None:
        config.parameters[key].string_value = str(value)
    return apply


APPLY: dict[str, Callable] = {  # knob field -> how it is written into a config
    "instances": _set_instances,
    "dynamic_batching": _set_dynamic_batching,
    "max_queue_delay_us": _set_queue_delay,
    "intra_op_threads": _parameter("intra_op_thread_count"),
    "session_batch_size": _parameter("session_batch_size"),
}
assert tuple(APPLY) == FIELDS, "every knob field the options accept has a writer, and no other"

# How `triton-deploy repo` reproduces a knob, by the step's role (its name's suffix): the one source of configs.
REPO_FLAGS = {
    ("_preprocess", "instances"): "--preprocess-instances",
    ("_classifier", "instances"): "--classifier-instances",
    ("_postprocess", "instances"): "--postprocess-instances",
    ("_classifier", "max_queue_delay_us"): "--max-queue-delay-us",
    ("_classifier", "intra_op_threads"): "--intra-op-threads",
    ("_classifier", "session_batch_size"): "--session-batch-size",
}


def repo_flags(candidate: Candidate, knobs: list[Knob]) -> tuple[list[str], list[str]]:
    """(``repo`` flags that reproduce ``candidate``, knob settings ``repo`` has no flag for)."""
    flags, unmatched = [], []
    for knob in knobs:
        value = candidate.value(knob)
        if value == knob.values[0]:
            continue
        flag = next((f for (suffix, fld), f in REPO_FLAGS.items()
                     if knob.model.endswith(suffix) and fld == knob.field), None)
        if flag and not (knob.field == "intra_op_threads" and value == "auto"):
            flags.append(f"{flag} {value}")
        else:
            unmatched.append(f"{knob.name}={show_value(value)}")
    return flags, unmatched
