"""The ground under a scene: one smooth surface z = g0 + g1 x + g2 y + g3 (x^2 + y^2) in the LiDAR frame."""

from __future__ import annotations

import numpy as np

from .lidar import SENSOR_HEIGHT


def sample_ground(rng: np.random.Generator) -> np.ndarray:
    """Coefficients (g0, g1, g2, g3): the sensor about SENSOR_HEIGHT above the ground under it, slopes up to 1.5 %
    and curvature up to 1.2e-4 per m."""
    return np.array(
        [
            -SENSOR_HEIGHT + rng.normal(0.0, 0.03),
            rng.uniform(-0.015, 0.015),
            rng.uniform(-0.01, 0.01),
            rng.uniform(-1.2e-4, 1.2e-4),
        ]
    )


def ground_height(g: np.ndarray, x: float | np.ndarray, y: float | np.ndarray) -> float | np.ndarray:
    return g[0] + g[1] * x + g[2] * y + g[3] * (x * x + y * y)
