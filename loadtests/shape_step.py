"""A step load: ``--step-users`` more users every ``--step-seconds``, ``--steps`` times, then stop.

Usage:
    locust -f loadtests/locustfile.py,loadtests/shape_step.py --headless --host 127.0.0.1:8001 --protocol grpc \
        --step-users 4 --step-seconds 15 --steps 4

The per-step plateaus show where throughput stops growing and latency starts to: the knee of the curve.
"""

from __future__ import annotations

from locust import LoadTestShape


class StepLoadShape(LoadTestShape):
    def tick(self):
        assert self.runner is not None and self.runner.environment.parsed_options is not None  # set while running
        options = self.runner.environment.parsed_options
        step = int(self.get_run_time() // options.step_seconds)
        if step >= options.steps:
            return None
        users = options.step_users * (step + 1)
        return users, max(1.0, float(options.step_users))  # each step's users arrive within about a second
