"""A spike: ``--spike-base-users`` users, a jump to ``--spike-users`` at ``--spike-at`` seconds for
``--spike-seconds``, back to the base until ``--spike-total-seconds``.

Usage:
    locust -f loadtests/locustfile.py,loadtests/shape_spike.py --headless --host 127.0.0.1:8001 --protocol grpc \
        --spike-base-users 2 --spike-users 32 --spike-at 20 --spike-seconds 10 --spike-total-seconds 60

Shows how queue time and tail latency react to a sudden burst, and how fast they recover after it.
"""

from __future__ import annotations

from locust import LoadTestShape

from triton_deploy.loadtests.shapes import spike_stages, users_at


class SpikeLoadShape(LoadTestShape):
    def tick(self):
        assert self.runner is not None and self.runner.environment.parsed_options is not None  # set while running
        options = self.runner.environment.parsed_options
        stages = spike_stages(options.spike_base_users, options.spike_users, options.spike_at, options.spike_seconds,
                              options.spike_total_seconds)
        users = users_at(stages, self.get_run_time())
        if users is None:
            return None
        return users, float(max(options.spike_users, 1))  # a spike arrives at once
