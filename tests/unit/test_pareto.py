"""The optimiser's Pareto front on hand-written points. The optimiser's real runs are in
tests/integration/test_optimize.py."""

from __future__ import annotations

from triton_deploy.optimize.report import ParetoPoint, pareto_front


def test_pareto_front_keeps_only_undominated_variants():
    points = [ParetoPoint("fp32", 0.98, 100, 1000, True), ParetoPoint("int8", 0.975, 300, 250, True),
              ParetoPoint("slow_and_worse", 0.97, 90, 1200, True), ParetoPoint("pruned", 0.975, 400, 260, True)]
    assert pareto_front(points, "throughput") == ["fp32", "pruned"]
    assert pareto_front(points, "size") == ["fp32", "int8"]
