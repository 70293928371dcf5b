"""benchmarks/pointrcnn_point_budget.py: its expected per-box counts equal the mean of the sampler's own draws."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import pointrcnn_point_budget as budget_probe  # noqa: E402

from pcdet.datasets.processor.data_processor import DataProcessor  # noqa: E402


@pytest.mark.parametrize("budget", [50, 400, 900, 1500])  # below the far count, between, all near + far, repeats
def test_expected_counts_equal_the_mean_of_sample_points_draws(budget):
    rng = np.random.default_rng(0)
    near = np.c_[rng.uniform(0, 30, (700, 1)), rng.uniform(-10, 10, (700, 2)), np.zeros((700, 1))]
    far = np.c_[rng.uniform(41, 60, (300, 1)), rng.uniform(-10, 10, (300, 2)), np.zeros((300, 1))]
    points = np.concatenate([near, far]).astype(np.float32)
    points[:, 3] = np.arange(len(points))  # the intensity column carries each point's row, to count draws by source
    inside = np.stack([points[:, 0] < 15, points[:, 0] > 45, (points[:, 0] > 20) & (points[:, 0] < 50)])
    expected = budget_probe.expected_in_boxes(points, inside, budget)

    processor = DataProcessor([], point_cloud_range=np.zeros(6), training=False, num_point_features=4)
    np.random.seed(1)
    draws = 300
    counts = np.zeros(len(inside))
    for _ in range(draws):
        sampled = processor.sample_points({"points": points}, EasyDict(NUM_POINTS={"test": budget}))["points"]
        assert len(sampled) == budget
        counts += inside[:, sampled[:, 3].astype(int)].sum(axis=1)
    np.testing.assert_allclose(counts / draws, expected, rtol=0.04, atol=0.5)
