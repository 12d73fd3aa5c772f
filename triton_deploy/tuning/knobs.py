"""The vocabulary of the search: a knob (one field of one step's config), a candidate (the start with some knobs
changed) and the names of the fields ``tune`` may change. Plain data, no Triton libraries."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The config fields a candidate may change (``space.APPLY`` writes each into a config.pbtxt).
FIELDS = ("instances", "dynamic_batching", "max_queue_delay_us", "intra_op_threads", "session_batch_size")

Value = bool | int | str

# A named configuration (configs/<name>.pbtxt, Triton's --model-config-name): what the chart's schema accepts.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Knob:
    """One tunable field of one step's config."""

    model: str
    field: str  # instances | dynamic_batching | max_queue_delay_us | intra_op_threads | session_batch_size
    values: tuple[Value, ...]  # the starting value first

    @property
    def name(self) -> str:
        return f"{self.model}.{self.field}"


@dataclass(frozen=True)
class Candidate:
    """The starting configuration with ``changes`` (knob name -> value) applied."""

    changes: tuple[tuple[str, Value], ...] = ()

    def with_value(self, knob: Knob, value: Value) -> Candidate:
        changes = dict(self.changes)
        if value == knob.values[0]:
            changes.pop(knob.name, None)
        else:
            changes[knob.name] = value
        return Candidate(tuple(sorted(changes.items())))

    def value(self, knob: Knob) -> Value:
        return dict(self.changes).get(knob.name, knob.values[0])

    @property
    def label(self) -> str:
        return ", ".join(f"{name}={show_value(value)}" for name, value in self.changes) or "starting configuration"


def show_value(value: Value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
