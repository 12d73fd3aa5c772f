"""The stages of the load shapes (``shape_step.py``, ``shape_spike.py``), computed once for Locust and the report.

The Locust shape classes ask ``users_at`` how many users to run each second; ``plan_shape`` fills the options a
user did not give from ``--users`` (the peak) and ``--duration`` (the whole shape), so a shaped run lasts as long
as asked and the report can say exactly what ran: the length, the peak and every stage's user count.
"""

from __future__ import annotations

from dataclasses import dataclass

from triton_deploy.errors import Problem, raise_problems

STEP_OPTIONS = ("step-users", "step-seconds", "steps")
SPIKE_OPTIONS = ("spike-base-users", "spike-users", "spike-at", "spike-seconds", "spike-total-seconds")
DEFAULT_STEPS = 4


@dataclass(frozen=True)
class Stage:
    start_s: float
    end_s: float
    users: int


def step_stages(step_users: int, step_seconds: float, steps: int) -> list[Stage]:
    """``step_users`` more users every ``step_seconds``, ``steps`` times."""
    return [Stage(i * step_seconds, (i + 1) * step_seconds, step_users * (i + 1)) for i in range(steps)]


def spike_stages(base_users: int, spike_users: int, at_s: float, spike_s: float, total_s: float) -> list[Stage]:
    """``base_users``, ``spike_users`` from ``at_s`` for ``spike_s``, back to the base until ``total_s``."""
    edges = sorted({0.0, min(at_s, total_s), min(at_s + spike_s, total_s), total_s})
    return [Stage(start, end, spike_users if at_s <= start < at_s + spike_s else base_users)
            for start, end in zip(edges, edges[1:], strict=False) if end > start]


def users_at(stages: list[Stage], elapsed_s: float) -> int | None:
    """Users to run ``elapsed_s`` into the shape; ``None`` once it is over."""
    return next((stage.users for stage in stages if stage.start_s <= elapsed_s < stage.end_s), None)


@dataclass(frozen=True)
class ShapePlan:
    name: str
    args: dict[str, float]  # every option of the shape, as passed to Locust (--step-users 2 ...)
    stages: tuple[Stage, ...]

    @property
    def duration_s(self) -> float:
        return self.stages[-1].end_s if self.stages else 0.0

    @property
    def peak_users(self) -> int:
        return max((stage.users for stage in self.stages), default=0)

    @property
    def stage_users(self) -> list[int]:
        return [stage.users for stage in self.stages]

    def describe(self) -> str:
        """'20 s, peak 8 users: 2 (5 s) -> 4 (5 s) -> 6 (5 s) -> 8 (5 s)'."""
        stages = " -> ".join(f"{stage.users} ({round(stage.end_s - stage.start_s, 2):g} s)" for stage in self.stages)
        return f"{round(self.duration_s, 2):g} s, peak {self.peak_users} users: {stages}"

    def to_dict(self) -> dict:
        return {"name": self.name, "args": self.args, "duration_s": self.duration_s, "peak_users": self.peak_users,
                "stages": [vars(stage) for stage in self.stages]}


def shape_problems(name: str, given: dict[str, str]) -> list[Problem]:
    """What is wrong with ``--shape-arg``s for shape ``name``: unknown options, values that are not numbers, values
    that are not positive (``spike-at`` may be 0), all of them."""
    known = STEP_OPTIONS if name == "step" else SPIKE_OPTIONS
    problems: list[Problem] = []
    unknown = sorted(set(given) - set(known))
    if unknown:
        problems.append((f"--shape {name} has no option {', '.join(unknown)}",
                         f"--shape-arg takes {', '.join(f'{k}=N' for k in known)}"))
    values: dict[str, float] = {}
    for key, value in given.items():
        try:
            values[key] = float(value)
        except ValueError:
            problems.append((f"--shape-arg values must be numbers: {key}={value}", "e.g. --shape-arg step-users=4"))
    if any(value <= 0 for key, value in values.items() if key != "spike-at") or values.get("spike-at", 0) < 0:
        problems.append((f"--shape-arg values must be positive, got {given}", "check --shape-arg"))
    return problems


def plan_shape(name: str, given: dict[str, str], users: int, duration_s: float) -> ShapePlan:
    """The shape that will run: options from ``--shape-arg`` as given, the others from ``users`` (the peak) and
    ``duration_s`` (the whole shape)."""
    raise_problems(shape_problems(name, given))
    values = {key: float(value) for key, value in given.items()}
    args: dict[str, float]
    if name == "step":
        steps = int(values.get("steps") or (max(1, round(duration_s / values["step-seconds"]))
                                            if "step-seconds" in values else min(DEFAULT_STEPS, users)))
        step_seconds = values.get("step-seconds", duration_s / steps)
        step_users = int(values.get("step-users", max(1, users // steps)))
        args = {"steps": steps, "step-seconds": step_seconds, "step-users": step_users}
        stages = step_stages(step_users, step_seconds, steps)
    else:
        total = values.get("spike-total-seconds", duration_s)
        peak = int(values.get("spike-users", users))
        base = int(values.get("spike-base-users", max(1, peak // 8)))
        at, seconds = values.get("spike-at", total / 3), values.get("spike-seconds", total / 3)
        args = {"spike-total-seconds": total, "spike-users": peak, "spike-base-users": base, "spike-at": at,
                "spike-seconds": seconds}
        stages = spike_stages(base, peak, at, seconds, total)
    return ShapePlan(name, args, tuple(stages))
