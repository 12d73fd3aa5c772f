"""A spike: ``--spike-base-users`` users, a jump to ``--spike-users`` at ``--spike-at`` seconds for
``--spike-seconds``, back to the base until ``--spike-total-seconds``.

Usage:
    locust -f loadtests/locustfile.py,loadtests/shape_spike.py --headless --host 127.0.0.1:8001 --protocol grpc \
        --spike-base-users 2 --spike-users 32 --spike-at 20 --spike-seconds 10 --spike-total-seconds 60

Shows how queue time and tail latency react to a sudden burst, and how fast they recover after it.
"""

from __future__ import annotations

from locust import LoadTestShape


class SpikeLoadShape(LoadTestShape):
    def tick(self):
        assert self.runner is not None and self.runner.environment.parsed_options is not None  # set while running
        options = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        if elapsed >= options.spike_total_seconds:
            return None
        in_spike = options.spike_at <= elapsed < options.spike_at + options.spike_seconds
        users = options.spike_users if in_spike else options.spike_base_users
        return users, float(max(options.spike_users, 1))  # a spike arrives at once
